"""A small, self-contained LaTeX → sympy parser whose every expensive construct is bounded first.

It builds sympy objects directly (nothing from a completion reaches ``eval``/``sympify``), and
refuses powers, roots, factorials, binomials and towers of exponentials whose result could be
expensive *before* sympy computes them, so a check never depends on a timer.
"""

from __future__ import annotations

import re

MAX_CHARS = 400  # longer answers are not parsed, only compared as strings
MAX_TOKENS = 200
MAX_BITS = 20_000  # largest exact rational power/factorial/binomial the parser builds (bits)
MAX_EXPONENT = 10_000  # largest |exponent| of any power (also through nesting)
MAX_FACTORIAL = 2_000


class Unparsable(Exception):
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
            raise Unparsable(s[pos:])
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    if len(tokens) > MAX_TOKENS:
        raise Unparsable("too long")
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
            raise Unparsable("unexpected end")
        self.i += 1
        return tok

    def expect(self, value: str) -> None:
        tok = self.take()
        if tok[1] != value:
            raise Unparsable(f"expected {value}")

    def parse(self):  # -> sympy.Expr
        expr = self.sum()
        if self.peek() is not None:
            raise Unparsable(f"trailing {self.peek()}")
        return expr

    def sum(self):
        expr = self.product()
        while (tok := self.peek()) and tok[1] in ("+", "-", "\\pm"):
            self.take()
            if tok[1] == "\\pm":
                raise Unparsable("plus-minus")
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
                    raise Unparsable("division by zero")
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
                    raise Unparsable("division by zero")
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
                    raise Unparsable("root index")
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
                fn = {
                    "ln": sp.log,
                    "log": sp.log,
                    "exp": sp.exp,
                    "sin": sp.sin,
                    "cos": sp.cos,
                    "tan": sp.tan,
                    "cot": sp.cot,
                    "sec": sp.sec,
                    "csc": sp.csc,
                    "arcsin": sp.asin,
                    "arccos": sp.acos,
                    "arctan": sp.atan,
                }[name]
                if name == "exp":
                    out = self._pow(sp.E, arg)
                else:
                    _no_tower(sp, arg)
                    out = fn(arg)
                return self._pow(out, power) if power is not None else out
        raise Unparsable(f"unsupported {value}")

    def _pow(self, base, exp):
        """``base ** exp``, refused when the result could be expensive to build or evaluate."""
        sp = self.sp
        if exp.is_Number:
            if not exp.is_Rational or abs(exp.p) > MAX_EXPONENT or exp.q > 100:
                raise Unparsable("exponent too large")
            if base.is_Rational and base != 0:
                bits = int(abs(base.p)).bit_length() + int(base.q).bit_length()
                if bits > 2 and bits * abs(exp) > MAX_BITS:
                    raise Unparsable("power too large")
            if _max_exponent(sp, base) * abs(exp) > MAX_EXPONENT:
                raise Unparsable("power too large")
        else:
            _no_tower(sp, exp)
            if base.is_Number:
                # a numeric base and a non-numeric exponent: the exponent must stay small when evaluated
                if base.is_Rational and int(abs(base.p)).bit_length() + int(base.q).bit_length() > 64:
                    raise Unparsable("power too large")
        return sp.Pow(base, exp)

    def _factorial(self, arg):
        if not (arg.is_Integer and 0 <= arg <= MAX_FACTORIAL):
            raise Unparsable("factorial")
        return self.sp.factorial(arg)

    def _binomial(self, n, k):
        sp = self.sp
        for value in (n, k):
            if value.is_Number and not (value.is_Integer and abs(value) <= MAX_FACTORIAL):
                raise Unparsable("binomial")
            if not value.is_Number and (not k.is_Integer or value is n and k.free_symbols):
                raise Unparsable("binomial")
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
            raise Unparsable("tower of powers")
    if expr.has(sp.exp):
        raise Unparsable("tower of powers")


def to_sympy(answer: str):
    """Parse a cleaned LaTeX expression into sympy, or ``None`` if the small parser cannot."""
    if len(answer) > MAX_CHARS or not answer.strip():
        return None
    if re.search(r"[a-zA-Z]{3,}", re.sub(r"\\[a-zA-Z]+", " ", answer)):
        return None  # a word ("Devon", "odd"): compare as text, not as a product of symbols
    try:
        return _Parser(answer).parse()
    except (Unparsable, ValueError, TypeError, ZeroDivisionError, RecursionError, OverflowError, AttributeError):
        return None
    except Exception:  # sympy raises assorted errors on odd input; an unparsable answer is just a string
        return None
