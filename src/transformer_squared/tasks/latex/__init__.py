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

from .equal import MAX_CLEAN_CHARS, REL_TOL, answers_equal
from .normalize import clean, normalize, split_top_level, strip_units_and_text
from .parse import MAX_BITS, MAX_CHARS, MAX_EXPONENT, MAX_FACTORIAL, MAX_TOKENS, to_sympy

__all__ = [
    "MAX_BITS",
    "MAX_CHARS",
    "MAX_CLEAN_CHARS",
    "MAX_EXPONENT",
    "MAX_FACTORIAL",
    "MAX_TOKENS",
    "REL_TOL",
    "answers_equal",
    "clean",
    "normalize",
    "split_top_level",
    "strip_units_and_text",
    "to_sympy",
]
