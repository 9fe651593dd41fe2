"""Paired statistics and `t2 compare`: McNemar against hand-computed cases, refusals, the CLI."""

from __future__ import annotations

import json
import math

import pytest

from transformer_squared import T2Error
from transformer_squared.stats import (
    binom_cdf,
    compare_outcomes,
    detectable_difference,
    mcnemar_exact,
    paired_ci,
    pooled,
)


def test_mcnemar_exact_on_hand_computed_cases():
    # 1 won, 9 lost: 2 · P(X ≤ 1 | n=10, 1/2) = 2 · (1 + 10) / 1024
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024, rel=1e-12)
    assert mcnemar_exact(9, 1) == pytest.approx(22 / 1024, rel=1e-12)
    # 0 won, 5 lost: 2 / 32
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625, rel=1e-12)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    # large n stays exact in log space: 133 vs 47
    assert 1e-11 < mcnemar_exact(133, 47) < 1e-9
    assert binom_cdf(3, 6) == pytest.approx((1 + 6 + 15 + 20) / 64)


def test_paired_ci_and_detectable_difference():
    lo, hi = paired_ci(30, 10, 200)
    assert lo < 0.1 < hi and lo > 0  # +10 points, discordant share 0.2
    half = 1.959964 * math.sqrt((40 - 400 / 200) / 200**2)
    assert (hi - lo) / 2 == pytest.approx(half, rel=1e-5)
    # more items: smaller detectable effect; ~2 points on the full ARC-Easy test with 10% discordant items
    assert detectable_difference(2376, 0.1) == pytest.approx(2.8016 * math.sqrt(0.1 / 2376), rel=1e-3)
    assert detectable_difference(300, 0.1) > detectable_difference(2376, 0.1)


def test_compare_outcomes_counts_and_refuses_other_items():
    a = {"1": True, "2": False, "3": False, "4": True}
    b = {"1": True, "2": True, "3": True, "4": False}
    c = compare_outcomes(a, b)
    assert (c.n, c.won, c.lost) == (4, 2, 1) and c.difference == pytest.approx(0.25)
    with pytest.raises(T2Error, match="different items"):
        compare_outcomes(a, {"1": True, "2": True, "3": True, "5": True})
    both = pooled([c, c])
    assert (both.n, both.won, both.lost) == (8, 4, 2)


def _report(tmp_path, name, rows, **extra):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"task": "arc_easy", "split": "test", "expert": None, **extra}))
    (tmp_path / f"{name}.json.items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_compare(tmp_path, capsys):
    from transformer_squared.cli import main

    a = _report(tmp_path, "base", [{"id": str(i), "correct": i < 3} for i in range(12)])
    b = _report(tmp_path, "exp", [{"id": str(i), "correct": i >= 2} for i in range(12)], expert="mine")
    assert main(["compare", str(a), str(b), "--json", str(tmp_path / "cmp.json")]) == 0
    out = capsys.readouterr().out
    assert "B won 9, lost 2" in out and "+58.3 points" in out
    saved = json.loads((tmp_path / "cmp.json").read_text())
    assert saved["p_value"] == pytest.approx(mcnemar_exact(9, 2))
    other = _report(tmp_path, "other", [{"id": str(i), "correct": True} for i in range(1, 13)])
    assert main(["compare", str(a), str(other)]) == 2
    assert "different items" in capsys.readouterr().err
    ll = _report(tmp_path, "ll", [{"id": str(i), "correct": True} for i in range(12)], extra={"mode": "loglik"})
    assert main(["compare", str(a), str(ll)]) == 2
    assert "answer modes" in capsys.readouterr().err
    assert main(["compare", str(a), str(tmp_path / "missing.json")]) == 2
    # the same mode but another channel is not like with like either
    ll2 = _report(
        tmp_path,
        "ll2",
        [{"id": str(i), "correct": True} for i in range(12)],
        extra={"mode": "loglik", "channel": "letter"},
    )
    assert main(["compare", str(ll), str(ll2)]) == 2
    assert "answer modes" in capsys.readouterr().err
    # a per-item file that holds more items than its report counts (an --out reused with another --limit)
    short = _report(tmp_path, "short", [{"id": str(i), "correct": True} for i in range(12)], n=6)
    assert main(["compare", str(a), str(short)]) == 2
    assert "per-item file holds 12" in capsys.readouterr().err
