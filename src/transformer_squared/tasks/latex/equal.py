"""Whether two competition-math answers are equivalent: strings, then structure, then sympy values."""

from __future__ import annotations

import random
import re

from .normalize import brackets, clean, matrix, mixed_numbers, normalize, split_top_level
from .parse import MAX_CHARS, to_sympy

MAX_CLEAN_CHARS = 2000  # longer answers are compared as whitespace-free strings, not normalised
REL_TOL = "1e-12"  # relative tolerance for values that are not rational


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
    a, b = to_sympy(mixed_numbers(pred)), to_sympy(mixed_numbers(gold))
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
    mp, mg = matrix(p), matrix(g)
    if mp is not None or mg is not None:
        if mp is None or mg is None or [len(r) for r in mp] != [len(r) for r in mg]:
            return False
        return all(_expr_equal(x, y) for rp, rg in zip(mp, mg, strict=True) for x, y in zip(rp, rg, strict=True))
    if "\\cup" in p or "\\cup" in g:
        up, ug = p.split("\\cup"), g.split("\\cup")
        return len(up) == len(ug) and all(answers_equal(x, y) for x, y in zip(up, ug, strict=True))
    bp, bg = brackets(p), brackets(g)
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
