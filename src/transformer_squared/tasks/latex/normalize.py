"""String-level normalisation of LaTeX answers: units and ``\\text``, fractions, ``x =``, lists, brackets.

Whitespace runs are collapsed first and the callers cap answer lengths, so every normalisation here
is linear in the answer's length.
"""

from __future__ import annotations

import re

_UNIT_WORDS = (
    "units?|sq\\.?|square|cubic|cm|centimeters?|centimetres?|mm|millimeters?|km|kilometers?|meters?|metres?|"
    "inch(?:es)?|in\\.|feet|foot|ft|yards?|yd|miles?|mph|degrees?|dollars?|cents?|hours?|hrs?|minutes?|mins?|"
    "seconds?|secs?|days?|weeks?|months?|years?|pounds?|lbs?|ounces?|oz|grams?|kg|kilograms?|liters?|litres?|"
    "ml|gallons?|people|persons?|students?|ways?|times|points?|percent|calories|pages|books|marbles|apples"
)
# Short unit names only recognised inside \text{...} (bare, they could be variables).
_TEXT_ONLY_UNITS = "m|s|g|l|h|mi|in|sq\\s*units?|m\\^?2|cm\\^?2"
_UNIT_TAIL_RE = re.compile(rf"(?<=[\d}}).])\s*(?:\\,|\\;|\\ |~)?\s*(?:{_UNIT_WORDS})(?:\s*\^\{{?[23]\}}?)?\s*$", re.I)
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mbox|mathrm|mathbf|mathit|operatorname)\s*\{([^{}]*)\}")


def strip_units_and_text(s: str) -> str:
    """Remove unit words (``\\text{ cm}^2``, ``5 inches``) and unwrap other ``\\text{...}``."""

    def text_sub(m: re.Match[str]) -> str:
        inner = m.group(1)
        # A \text{} that holds only a unit, following something: drop it (with a following ^2).
        if m.start() > 0 and re.fullmatch(rf"\s*(?:{_UNIT_WORDS}|{_TEXT_ONLY_UNITS})\s*", inner, re.I):
            return "\x00"
        return inner

    prev = None
    while prev != s:  # innermost first, repeated for nesting
        prev = s
        s = _TEXT_CMD_RE.sub(text_sub, s)
    s = re.sub(r"\x00(?:\s*\^\s*\{?[23]\}?)?", "", s)
    prev = None
    while prev != s:
        prev = s
        s = _UNIT_TAIL_RE.sub("", s).rstrip()
    return s


def _fix_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac{a}b`` -> ``\\frac{a}{b}``, ``\\sqrt2`` -> ``\\sqrt{2}``."""
    s = re.sub(r"\\frac\s*(\w)\s*(\w)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*(\{[^{}]*\})\s*(\w)", r"\\frac\1{\2}", s)
    s = re.sub(r"\\frac\s*(\w)\s*(\{)", r"\\frac{\1}\2", s)
    s = re.sub(r"\\sqrt\s*(\w)", r"\\sqrt{\1}", s)
    return s


def clean(answer: str) -> str:
    """Normalise a LaTeX answer but keep spaces (the parser needs them between commands)."""
    s = re.sub(r"\s++", " ", str(answer)).strip()
    s = s.replace("\n", " ").replace("\\!", "").replace("\\displaystyle", "")
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])", "", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"(?<!\\)\\(?:,|;|:| |quad|qquad)", " ", s)
    s = s.replace("~", " ")
    s = s.replace("{,}", "")  # 10{,}000
    s = strip_units_and_text(s)
    # degrees
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", s)
    s = s.replace("\\circ", "").replace("°", "").replace("\\degree", "")
    # percent
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace("\\lbrace", "\\{").replace("\\rbrace", "\\}")
    s = re.sub(r"\\(?:mathbb|mathcal)\{R\}", "R", s)
    s = _fix_fracs(s)
    s = s.strip()
    # "x \in [2,5)" -> "[2,5)"; a leading "x =" / "k=" (one variable) -> the value
    m = re.match(r"^[a-zA-Z](?:_\{?\w+\}?)?\s*\\in\s*(.+)$", s)
    if m:
        s = m.group(1)
    m = re.match(r"^[a-zA-Z](?:_\{?\w+\}?)?\s*=\s*(.+)$", s)
    if m and "=" not in m.group(1):
        s = m.group(1)
    s = s.strip()
    s = s.rstrip(" .,;")
    # "12 and 13" / "7, -2, and -5" -> comma lists
    if re.search(r"\d", s):
        s = re.sub(r"\s*,?\s*\band\b\s*", ", ", s)
    # "18 integers", "65 children tickets": a number followed only by words -> the number
    m = re.fullmatch(r"(-?\d[\d,]*(?:\.\d+)?)\s+[A-Za-z][A-Za-z ]*", s)
    if m:
        s = m.group(1)
    # 1,000,000 -> 1000000 (only when the whole answer is one such number)
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    # .5 -> 0.5 ; "(C)" -> "C"
    s = re.sub(r"(?<![\d\w])\.(\d)", r"0.\1", s)
    m = re.fullmatch(r"\(\s*([A-Ea-e])\s*\)", s)
    if m:
        s = m.group(1).upper()
    return s


def normalize(answer: str) -> str:
    """The string form two answers are compared in: :func:`clean` without whitespace."""
    return re.sub(r"\s++", "", clean(answer))


_OPEN = {"(": ")", "[": "]", "{": "}"}


def split_top_level(s: str) -> list[str]:
    """Split at commas that are not inside brackets or braces (``\\{``/``\\}`` count as braces)."""
    parts, depth, cur = [], 0, []
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "\\" and i + 1 < len(s) and s[i + 1] in "{}":
            depth += 1 if s[i + 1] == "{" else -1
            cur.append(s[i : i + 2])
            i += 2
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def brackets(s: str) -> tuple[str, str, str] | None:
    """``("(", inner, "]")`` when ``s`` is wrapped in one matching pair of brackets (tuple/interval/set)."""
    s = s.strip()
    if s.startswith("\\{") and s.endswith("\\}"):
        return "{", s[2:-2], "}"
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]":
        depth = 0
        for i, ch in enumerate(s):
            if ch in "([{":
                depth += 1
            elif ch in ")]}":
                depth -= 1
            if depth == 0 and i < len(s) - 1:
                return None  # "(a)(b)": not one wrapper
        return s[0], s[1:-1], s[-1]
    return None


def matrix(s: str) -> list[list[str]] | None:
    """Cells of a ``\\begin{pmatrix}...\\end{pmatrix}`` (or bmatrix), row by row; else None."""
    m = re.fullmatch(r"\s*\\begin\{([pbv]?matrix)\}(.*)\\end\{\1\}\s*", s, re.S)
    if not m:
        return None
    rows = [r for r in re.split(r"\\\\", m.group(2)) if r.strip()]
    return [[c.strip() for c in r.split("&")] for r in rows]


def mixed_numbers(s: str) -> str:
    """``2\\frac{1}{2}`` (a mixed number) -> ``(2+\\frac{1}{2})``."""
    return re.sub(r"(?<![\d.])(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}", r"(\1+\\frac{\2}{\3})", s)
