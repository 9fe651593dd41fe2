"""LaTeX answer normalisation and equivalence for competition math (the MATH checker).

``answers_equal(pred, gold)`` first compares normalised strings; when they differ it parses
both sides into sympy expressions with a small, self-contained LaTeX parser (``\\frac``,
``\\sqrt``, ``^``, ``\\cdot``, ``\\pi``, implicit multiplication, ...) and compares them.
Rational values (integers, fractions, decimals, which the parser keeps exact) compare exactly; a
non-finite value (``\\infty``, a division by zero) is never numerically equal to anything; other
values are evaluated to 40 significant digits with arbitrary-range floats (no overflow) and
compared with a relative tolerance of 1e-12, at rational points when they have variables. Tuples,
intervals and lists are compared element by element.

The parser builds sympy objects directly: nothing from a completion is ever passed to
``eval``/``sympify``. Whitespace runs are collapsed first and answers are length-capped, so every
normalisation is linear. Every expensive construct (powers, roots, factorials, binomials,
exponentials of exponentials) is bounded *before* sympy computes it, so the outcome never
depends on a timer or on which thread runs the check.
"""

from __future__ import annotations

import random
import re

MAX_CHARS = 400  # longer answers are not parsed, only compared as strings
MAX_CLEAN_CHARS = 2000  # longer answers are compared as whitespace-free strings, not normalised
MAX_TOKENS = 200
MAX_BITS = 20_000  # largest exact rational power/factorial/binomial the parser builds (bits)
MAX_EXPONENT = 10_000  # largest |exponent| of any power (also through nesting)
MAX_FACTORIAL = 2_000
REL_TOL = "1e-12"  # relative tolerance for values that are not rational

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


# --------------------------------------------------------------------------- normalisation


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


# --------------------------------------------------------------------------- splitting lists


_OPEN = {"(": ")", "[": "]", "{": "}"}


def split_top_level(s: str) -> list[str]:
    """Split at commas that are not inside brackets or braces (``\\{``/``\\}`` count as braces)."""
    parts, depth, cur = [], 0, []
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "\\" and i + 1 < len(s) and s[i + 1] in "{}":
            depth += 1 if s[i + 1] == "{" else -1
            cur.append(s[i:i + 2])
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


def _brackets(s: str) -> tuple[str, str, str] | None:
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


# --------------------------------------------------------------------------- LaTeX -> sympy


class _Unparsable(Exception):
    pass


_TOKEN_RE = re.compile(
    r"\s*(?:(?P<cmd>\\[a-zA-Z]+)|(?P<num>\d+(?:\.\d*)?|\.\d+)|(?P<sym>[a-zA-Z])|(?P<op>\\\{|\\\}|[-+*/^()\[\]{}_!|,=]))"
)

_FUNCS = {"sin", "cos", "tan", "cot", "sec", "csc", "ln", "log", "exp", "arcsin", "arccos", "arctan"}


def _tokenize(s: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    s = s.rstrip()
    while pos < len(s):
        m = _TOKEN_RE.match(s, pos)
        if not m or m.end() == pos:
            raise _Unparsable(s[pos:])
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    if len(tokens) > MAX_TOKENS:
        raise _Unparsable("too long")
    return tokens


class _Parser:
    """Recursive-descent parser from LaTeX math tokens to a sympy expression."""

    def __init__(self, text: str):
        import sympy

        self.sp = sympy
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise _Unparsable("unexpected end")
        self.i += 1
        return tok

    def expect(self, value: str) -> None:
        tok = self.take()
        if tok[1] != value:
            raise _Unparsable(f"expected {value}")

    def parse(self):  # -> sympy.Expr
        expr = self.sum()
        if self.peek() is not None:
            raise _Unparsable(f"trailing {self.peek()}")
        return expr

    def sum(self):
        expr = self.product()
        while (tok := self.peek()) and tok[1] in ("+", "-", "\\pm"):
            self.take()
            if tok[1] == "\\pm":
                raise _Unparsable("plus-minus")
            rhs = self.product()
            expr = expr + rhs if tok[1] == "+" else expr - rhs
        return expr

    def _starts_atom(self, tok: tuple[str, str] | None) -> bool:
        if tok is None:
            return False
        kind, value = tok
        if kind in ("num", "sym"):
            return True
        if kind == "cmd":
            return value not in ("\\cdot", "\\times", "\\div", "\\pm")
        return value in ("(", "{", "|")

    def product(self):
        expr = self.unary()
        while True:
            tok = self.peek()
            if tok and tok[1] in ("*", "\\cdot", "\\times"):
                self.take()
                expr = expr * self.unary()
            elif tok and tok[1] in ("/", "\\div"):
                self.take()
                rhs = self.unary()
                if rhs == 0:
                    raise _Unparsable("division by zero")
                expr = expr / rhs
            elif self._starts_atom(tok) and tok[1] != "|":
                expr = expr * self.postfix()
            else:
                return expr

    def unary(self):
        tok = self.peek()
        if tok and tok[1] == "-":
            self.take()
            return -self.unary()
        if tok and tok[1] == "+":
            self.take()
            return self.unary()
        return self.postfix()

    def postfix(self):
        base = self.atom()
        while (tok := self.peek()) and tok[1] in ("^", "!"):
            self.take()
            if tok[1] == "!":
                base = self._factorial(base)
            else:
                base = self._pow(base, self.exponent())
        return base

    def exponent(self):
        tok = self.peek()
        if tok and tok[1] == "-":
            self.take()
            return -self.exponent()
        if tok and tok[0] == "num" and len(tok[1]) > 1:
            # x^23 means x^2 * 3 in LaTeX: take one digit, leave the rest.
            self.toks[self.i] = ("num", tok[1][1:])
            return self.sp.Integer(int(tok[1][0]))
        return self.atom()

    def group(self):
        """A ``{...}`` argument or a single token (``\\frac12``)."""
        tok = self.peek()
        if tok and tok[1] == "{":
            self.take()
            expr = self.sum()
            self.expect("}")
            return expr
        if tok and tok[0] == "num" and len(tok[1]) > 1:
            self.toks[self.i] = ("num", tok[1][1:])
            return self.sp.Integer(int(tok[1][0]))
        return self.atom()

    def atom(self):
        sp = self.sp
        kind, value = self.take()
        if kind == "num":
            if "." in value:
                return sp.Rational(value)  # exact decimal
            return sp.Integer(int(value))
        if kind == "sym":
            name = value
            if (tok := self.peek()) and tok[1] == "_":  # subscript: x_1, x_{12}
                self.take()
                sub = self.take()
                if sub[1] == "{":
                    parts = []
                    while (t := self.take())[1] != "}":
                        parts.append(t[1])
                    sub = ("", "".join(parts))
                name = f"{value}_{sub[1]}"
            return sp.I if name == "i" else sp.Symbol(name)
        if value in ("(", "{", "["):
            close = {"(": ")", "{": "}", "[": "]"}[value]
            expr = self.sum()
            self.expect(close)
            return expr
        if value == "|":
            expr = self.sum()
            self.expect("|")
            return sp.Abs(expr)
        if kind == "cmd":
            name = value[1:]
            if name == "frac":
                num = self.group()
                den = self.group()
                if den == 0:
                    raise _Unparsable("division by zero")
                return num / den
            if name == "binom":
                n, k = self.group(), self.group()
                return self._binomial(n, k)
            if name == "sqrt":
                index = None
                if (tok := self.peek()) and tok[1] == "[":
                    self.take()
                    index = self.sum()
                    self.expect("]")
                arg = self.group()
                if index is not None and (not index.is_Integer or not 2 <= index <= 100):
                    raise _Unparsable("root index")
                return self._pow(arg, sp.Rational(1, 2 if index is None else int(index)))
            if name == "pi":
                return sp.pi
            if name == "infty":
                return sp.oo
            if name in ("alpha", "beta", "gamma", "theta", "phi", "omega", "lambda", "mu", "sigma", "tau", "rho"):
                return sp.Symbol(name)
            if name in _FUNCS:
                power = None
                if (tok := self.peek()) and tok[1] == "^":
                    self.take()
                    power = self.exponent()
                arg = self.postfix()
                fn = {"ln": sp.log, "log": sp.log, "exp": sp.exp, "sin": sp.sin, "cos": sp.cos, "tan": sp.tan,
                      "cot": sp.cot, "sec": sp.sec, "csc": sp.csc, "arcsin": sp.asin, "arccos": sp.acos,
                      "arctan": sp.atan}[name]
                if name == "exp":
                    out = self._pow(sp.E, arg)
                else:
                    _no_tower(sp, arg)
                    out = fn(arg)
                return self._pow(out, power) if power is not None else out
        raise _Unparsable(f"unsupported {value}")

    def _pow(self, base, exp):
        """``base ** exp``, refused when the result could be expensive to build or evaluate."""
        sp = self.sp
        if exp.is_Number:
            if not exp.is_Rational or abs(exp.p) > MAX_EXPONENT or exp.q > 100:
                raise _Unparsable("exponent too large")
            if base.is_Rational and base != 0:
                bits = int(abs(base.p)).bit_length() + int(base.q).bit_length()
                if bits > 2 and bits * abs(exp) > MAX_BITS:
                    raise _Unparsable("power too large")
            if _max_exponent(sp, base) * abs(exp) > MAX_EXPONENT:
                raise _Unparsable("power too large")
        else:
            _no_tower(sp, exp)
            if base.is_Number:
                # a numeric base and a non-numeric exponent: the exponent must stay small when evaluated
                if base.is_Rational and int(abs(base.p)).bit_length() + int(base.q).bit_length() > 64:
                    raise _Unparsable("power too large")
        return sp.Pow(base, exp)

    def _factorial(self, arg):
        if not (arg.is_Integer and 0 <= arg <= MAX_FACTORIAL):
            raise _Unparsable("factorial")
        return self.sp.factorial(arg)

    def _binomial(self, n, k):
        sp = self.sp
        for value in (n, k):
            if value.is_Number and not (value.is_Integer and abs(value) <= MAX_FACTORIAL):
                raise _Unparsable("binomial")
            if not value.is_Number and (not k.is_Integer or value is n and k.free_symbols):
                raise _Unparsable("binomial")
        return sp.binomial(n, k)


def _max_exponent(sp, expr) -> int:
    """The largest |numeric exponent| of a power inside ``expr`` (1 if none): nested powers multiply."""
    best = 1
    for power in expr.atoms(sp.Pow):
        if power.exp.is_Number:
            best = max(best, abs(power.exp.p) if power.exp.is_Rational else MAX_EXPONENT + 1)
    return int(best)


def _no_tower(sp, expr) -> None:
    """Refuse an argument that already holds an exponential or a power with a non-numeric exponent
    (``e^{e^{x}}``, ``2^{2^{x}}``): its value can exceed any float range."""
    for power in expr.atoms(sp.Pow):
        if not power.exp.is_Number:
            raise _Unparsable("tower of powers")
    if expr.has(sp.exp):
        raise _Unparsable("tower of powers")


def to_sympy(answer: str):
    """Parse a cleaned LaTeX expression into sympy, or ``None`` if the small parser cannot."""
    if len(answer) > MAX_CHARS or not answer.strip():
        return None
    if re.search(r"[a-zA-Z]{3,}", re.sub(r"\\[a-zA-Z]+", " ", answer)):
        return None  # a word ("Devon", "odd"): compare as text, not as a product of symbols
    try:
        return _Parser(answer).parse()
    except (_Unparsable, ValueError, TypeError, ZeroDivisionError, RecursionError, OverflowError,
            AttributeError):
        return None
    except Exception:  # sympy raises assorted errors on odd input; an unparsable answer is just a string
        return None


# --------------------------------------------------------------------------- comparison


def _non_finite(sp, expr) -> bool:
    return bool(expr.has(sp.oo, -sp.oo, sp.zoo, sp.nan))


def _value_close(sp, a, b) -> bool:
    """Numeric closeness of two constant expressions: exact if both are rational, else 40-digit
    arbitrary-range evaluation with relative tolerance REL_TOL; non-finite values are never close."""
    if a.is_Rational and b.is_Rational:
        return bool(a == b)
    values = []
    for expr in (a, b):
        value = sp.N(expr, 40)
        re_part, im_part = value.as_real_imag()
        for part in (re_part, im_part):
            if not part.is_Number or part.is_infinite or part is sp.nan or part != part:
                return False
        values.append((re_part, im_part))
    (ra, ia), (rb, ib) = values
    diff = abs(ra - rb) + abs(ia - ib)
    scale = max(sp.Integer(1), abs(ra) + abs(ia), abs(rb) + abs(ib))
    return bool(diff <= sp.Float(REL_TOL, 40) * scale)


def _rational_function(sp, expr) -> bool:
    """Whether ``expr`` is built from rationals and symbols by + - * / and integer powers only."""
    if expr.atoms(sp.Function) or expr.has(sp.pi, sp.E, sp.I):
        return False
    return all(power.exp.is_Integer for power in expr.atoms(sp.Pow))


def _numeric_equal(a, b) -> bool:
    import sympy as sp

    if _non_finite(sp, a) or _non_finite(sp, b):
        return False  # identical answers were already matched as strings
    syms = sorted(a.free_symbols | b.free_symbols, key=lambda s: s.name)
    if not syms:
        return _value_close(sp, a, b)
    rng = random.Random(1234)
    exact = _rational_function(sp, a) and _rational_function(sp, b)
    ok = 0
    for _ in range(3):
        subs = {s: sp.Rational(rng.randint(11, 97), rng.randint(7, 13)) for s in syms}
        try:
            if exact:  # a rational function at a rational point is an exact rational
                va, vb = a.subs(subs), b.subs(subs)
            else:
                # Exact substitution would let sympy build values such as 2^{(97/7)^{100}} exactly
                # (minutes, holding the GIL); arbitrary-range 40-digit floats stay fast.
                va, vb = a.evalf(40, subs=subs), b.evalf(40, subs=subs)
        except (TypeError, ValueError, ZeroDivisionError, OverflowError):
            continue
        if _non_finite(sp, va) or _non_finite(sp, vb) or va.free_symbols or vb.free_symbols:
            continue
        if not _value_close(sp, va, vb):
            return False
        ok += 1
    return ok > 0


def _expr_equal(pred: str, gold: str) -> bool:
    """Equivalence of two single (non-list) cleaned answers."""
    if normalize(pred) == normalize(gold):
        return True
    # equations with the same left-hand side: compare right-hand sides
    if pred.count("=") == 1 and gold.count("=") == 1:
        lp, rp = pred.split("=")
        lg, rg = gold.split("=")
        if re.sub(r"\s", "", lp) == re.sub(r"\s", "", lg):
            return _expr_equal(rp, rg)
        return False
    if "=" in pred or "=" in gold:
        return False
    if len(pred) > MAX_CHARS or len(gold) > MAX_CHARS:
        return False
    a, b = to_sympy(_mixed_numbers(pred)), to_sympy(_mixed_numbers(gold))
    if a is None or b is None:
        return False
    try:
        import sympy as sp

        if _non_finite(sp, a) or _non_finite(sp, b):
            return False  # non-finite values are never equal (identical strings matched above)
        if a == b:
            return True
        diff = a - b  # sympy collects like terms: e^{x^{100}}+1 minus e^{x^{100}} is exactly 1
        if diff.is_Number:
            return bool(diff == 0)  # no tolerance can hide a constant difference of huge values
        return _numeric_equal(a, b)
    except Exception:  # sympy failure: not shown equal
        return False


def _mixed_numbers(s: str) -> str:
    """``2\\frac{1}{2}`` (a mixed number) -> ``(2+\\frac{1}{2})``."""
    return re.sub(r"(?<![\d.])(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}", r"(\1+\\frac{\2}{\3})", s)


def answers_equal(pred: str | None, gold: str | None) -> bool:
    """Whether a predicted MATH answer is equivalent to the gold answer.

    Normalised strings first; then tuples/intervals (same brackets, element-wise, ordered),
    sets and bare lists (element-wise, any order), and single expressions via sympy.
    """
    if pred is None or gold is None:
        return False
    pred, gold = re.sub(r"\s++", " ", str(pred)).strip(), re.sub(r"\s++", " ", str(gold)).strip()
    if len(pred) > MAX_CLEAN_CHARS or len(gold) > MAX_CLEAN_CHARS:
        return pred.replace(" ", "") == gold.replace(" ", "")
    p, g = clean(pred), clean(gold)
    if not p:
        return False
    if normalize(p) == normalize(g):
        return True
    mp, mg = _matrix(p), _matrix(g)
    if mp is not None or mg is not None:
        if mp is None or mg is None or [len(r) for r in mp] != [len(r) for r in mg]:
            return False
        return all(_expr_equal(x, y) for rp, rg in zip(mp, mg, strict=True) for x, y in zip(rp, rg, strict=True))
    if "\\cup" in p or "\\cup" in g:
        up, ug = p.split("\\cup"), g.split("\\cup")
        return len(up) == len(ug) and all(answers_equal(x, y) for x, y in zip(up, ug, strict=True))
    bp, bg = _brackets(p), _brackets(g)
    if bp and bg:
        ep, eg = split_top_level(bp[1]), split_top_level(bg[1])
        if len(ep) == len(eg) and len(ep) > 1:
            if (bp[0], bp[2]) != (bg[0], bg[2]):
                return False
            if bp[0] == "{":
                return _unordered_equal(ep, eg)
            return all(_expr_equal(x, y) for x, y in zip(ep, eg, strict=True))
    lp, lg = split_top_level(p), split_top_level(g)
    if len(lp) > 1 or len(lg) > 1:
        if len(lp) != len(lg):
            return False
        return _unordered_equal(lp, lg)
    return _expr_equal(p, g)


def _matrix(s: str) -> list[list[str]] | None:
    """Cells of a ``\\begin{pmatrix}...\\end{pmatrix}`` (or bmatrix), row by row; else None."""
    m = re.fullmatch(r"\s*\\begin\{([pbv]?matrix)\}(.*)\\end\{\1\}\s*", s, re.S)
    if not m:
        return None
    rows = [r for r in re.split(r"\\\\", m.group(2)) if r.strip()]
    return [[c.strip() for c in r.split("&")] for r in rows]


def _unordered_equal(xs: list[str], ys: list[str]) -> bool:
    remaining = list(ys)
    for x in xs:
        for j, y in enumerate(remaining):
            if _expr_equal(x, y):
                del remaining[j]
                break
        else:
            return False
    return not remaining
