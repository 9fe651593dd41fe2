"""Task classification: which kind of request is this? (The Transformer² dispatcher's question.)

Items are requests taken from other tasks and labelled with their domain: by default ``math``
from GSM8K, ``code`` from MBPP, ``reasoning`` from ARC-Easy and ``commonsense`` from
CommonsenseQA (the domains of the shipped experts). Each split (train/val/test) is
built from the same split of those tasks, balanced (the same number per label: the size of the
smallest pool) by a seeded hash, and shuffled by a seeded hash. The model is asked to answer
``\\boxed{label}``.

The label set is configurable (``get_task("classify", labels=("math", "code", "reasoning",
"others"))``): labels without a source task appear among the options of the prompt but have no
items; ``sources={"label": "task"}`` maps labels to other tasks.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

from ..errors import T2Error
from .base import Item, SplitData, Task, render_prompt
from .gsm8k import last_boxed
from .sources import Source, Where, field, partition, rank

DEFAULT_LABELS = ("math", "code", "reasoning", "commonsense")
DEFAULT_SOURCES = {"math": "gsm8k", "code": "mbpp", "reasoning": "arc_easy", "commonsense": "csqa"}
DESCRIPTIONS = {
    "math": "mathematical problems: word problems, calculations, equations",
    "code": "programming: writing, completing or fixing computer code",
    "reasoning": "science and school-exam questions that need knowledge or logical reasoning",
    "commonsense": "everyday questions about people, objects and situations that need common sense",
    "others": "anything else",
}
SEED = "t2-classify-v1"


def classification_instruction(labels: Sequence[str]) -> str:
    """The instruction listing the categories and the ``\\boxed{}`` answer format."""
    lines = [f"- {lab}: {DESCRIPTIONS[lab]}" if lab in DESCRIPTIONS else f"- {lab}" for lab in labels]
    return (
        "Classify the request below into exactly one of these categories:\n"
        + "\n".join(lines)
        + "\nDo not answer the request itself. Reply only with the category, written as \\boxed{category}."
    )


def extract_label(completion: str, labels: Sequence[str]) -> str | None:
    """The label a completion gives (its last ``\\boxed{}``, "Category: X", or the bare label), or None."""
    if not completion:
        return None
    wanted = {lab.lower(): lab for lab in labels}

    def clean(s: str) -> str:
        s = re.sub(r"\\text\w*\{([^{}]*)\}", r"\1", s)
        return re.sub(r"[\s*`'\".:()\[\]]+", " ", s).strip().lower()

    boxed = last_boxed(completion)
    if boxed is not None:
        return wanted.get(clean(boxed))
    alternatives = "|".join(re.escape(k) for k in sorted(wanted, key=len, reverse=True))
    found = re.findall(
        rf"(?i:category|class|label|answer)\s*(?:\*\*)?\s*(?:is\s*:?|:)[\s*\"'`(]*({alternatives})\b",
        completion,
        re.IGNORECASE,
    )
    if found:
        return wanted.get(found[-1].lower())
    return wanted.get(clean(completion))


class Classify(Task):
    """Classify a request into one of ``labels``; reward by the boxed label."""

    name = "classify"
    domain = "classify"
    max_new_tokens = 64
    record_schema = "'question' (the request) and 'label'"

    def __init__(
        self,
        source: str | Source = "offline",
        reward_correct: float = 1.0,
        reward_wrong: float = -1.0,
        labels: Sequence[str] = DEFAULT_LABELS,
        sources: dict[str, str] | None = None,
    ):
        super().__init__(source, reward_correct, reward_wrong)
        labels = tuple(str(lab).strip().lower() for lab in labels)
        if (
            len(labels) < 2
            or len(set(labels)) != len(labels)
            or not all(re.fullmatch(r"[a-z][\w-]*", x) for x in labels)
        ):
            raise T2Error(f"classify labels must be two or more distinct words, got {labels!r}")
        self.labels = labels
        mapping = dict(DEFAULT_SOURCES)
        mapping.update(sources or {})
        self.label_sources = {lab: mapping[lab] for lab in labels if lab in mapping}
        from . import TASK_NAMES

        bad = [t for t in self.label_sources.values() if t not in TASK_NAMES or t == "classify"]
        if bad:
            raise T2Error(f"classify sources must be task names ({', '.join(TASK_NAMES[:-1])}); got {bad}")

    @property
    def cache_name(self) -> str:
        """``classify-<hash of the labels and their sources>`` (a new label set never reads an old cache)."""
        key = repr((self.labels, sorted(self.label_sources.items())))
        return f"{self.name}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"

    @property
    def instruction(self) -> str:  # type: ignore[override]  # read-only here: derived from the labels
        """The classification instruction for this task's labels."""
        return classification_instruction(self.labels)

    def messages_for(self, text: str) -> list[dict[str, str]]:
        """Chat messages asking to classify an arbitrary request ``text`` (used at inference)."""
        return [{"role": "user", "content": f"{self.instruction}\n\nRequest:\n{text.strip()}"}]

    def prompt_for(self, text: str, tokenizer: Any = None) -> str:
        """Prompt string classifying an arbitrary request ``text`` (chat template when available)."""
        return render_prompt(self.messages_for(text), tokenizer)

    def messages(self, item: Item) -> list[dict[str, str]]:
        """Chat messages for an item (the same format as :meth:`messages_for`)."""
        return self.messages_for(item.question)

    def item_from_record(self, rec: dict[str, Any], where: Where, index: int) -> Item:
        """A record with ``question`` (or ``text``) and ``label``."""
        question = field(rec, ["question", "text", "query"], where)
        label = field(rec, ["label", "answer"], where).strip().lower()
        if label not in self.labels:
            raise where.error(f"label {label!r} is not one of {list(self.labels)}")
        return Item(
            id=f"classify-{index}", question=question.strip(), answer=label, data={}, reference=f"\\boxed{{{label}}}"
        )

    def _build_offline(self) -> dict[str, SplitData]:
        return self._build_from_tasks()

    def _build_hub(self) -> dict[str, SplitData]:
        return self._build_from_tasks()

    def _build_from_tasks(self) -> dict[str, SplitData]:
        from . import get_task

        if not self.label_sources:
            raise T2Error(
                f"none of the classify labels {list(self.labels)} has a source task; "
                f"pass sources={{label: task}} (known: {DEFAULT_SOURCES})"
            )
        tasks = {lab: get_task(t, source=self.source) for lab, t in self.label_sources.items()}
        out: dict[str, SplitData] = {}
        for split in ("train", "val", "test"):
            pools = {lab: task.load(split) for lab, task in tasks.items() if split in task.splits()}
            if len(pools) != len(tasks):
                continue
            n = min(len(p) for p in pools.values())
            items: list[Item] = []
            notes = []
            for lab, pool in pools.items():
                src = self.label_sources[lab]
                chosen = partition(pool, [it.id for it in pool], {"pick": n}, f"{SEED}:{lab}")["pick"]
                items += [
                    Item(
                        id=f"{src}:{it.id}",
                        question=it.question,
                        answer=lab,
                        data={"source_task": src, "source_id": it.id},
                        reference=f"\\boxed{{{lab}}}",
                    )
                    for it in chosen
                ]
                notes.append(f"{src}/{split} ({len(pool)})")
            order = {i: k for k, i in enumerate(rank([it.id for it in items], SEED))}
            items.sort(key=lambda it: order[it.id])
            provenance = (
                f"{n} requests per label, drawn by seeded hash from "
                + ", ".join(notes)
                + "; see those tasks' provenance for how their splits were made"
            )
            carved = [
                self.label_sources[lab]
                for lab, task in tasks.items()
                if "not available offline" in task.split_info(split)["provenance"]
            ]
            if carved:
                provenance += (
                    f" (offline, the {' and '.join(carved)} {split} pools are parts of their official "
                    "test splits, disjoint from their held-out test parts)"
                )
            origin = (
                f"the {split} splits of "
                + ", ".join(sorted(set(self.label_sources.values())))
                + f" (source {self.source.label})"
            )
            out[split] = SplitData(items, provenance, origin, held_out=split == "test")
        return out

    def extract(self, completion: str) -> str | None:
        """The label in the completion (see :func:`extract_label`)."""
        return extract_label(completion, self.labels)

    def is_correct(self, item: Item, completion: str) -> bool:
        """The extracted label equals the gold label."""
        return self.extract(completion) == item.answer
