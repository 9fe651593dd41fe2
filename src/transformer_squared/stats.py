"""Paired statistics for two evaluations over the same items (``t2 compare``).

Two runs scored on the same items are compared item by item: the items one got right and the other
wrong (the discordant pairs) carry all the information. The exact McNemar test is a two-sided
binomial test of those pairs against 1/2; the difference of accuracies gets a Wald interval for
paired proportions; and :func:`detectable_difference` says how large a difference a test of this
size could have seen, so that a null result is reported with its power.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

from .errors import T2Error


def binom_cdf(k: int, n: int, p: float = 0.5) -> float:
    """P(X ≤ k) for X ~ Binomial(n, p), summed exactly in log space (n up to millions)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    logs = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p)
        for i in range(k + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def mcnemar_exact(won: int, lost: int) -> float:
    """Two-sided exact McNemar p-value for ``won`` (B right, A wrong) and ``lost`` (A right, B wrong) items."""
    if won < 0 or lost < 0:
        raise ValueError("counts must be non-negative")
    n = won + lost
    if n == 0:
        return 1.0
    return min(1.0, 2.0 * binom_cdf(min(won, lost), n))


def paired_ci(won: int, lost: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wald interval for the paired difference of accuracies (B − A) = (won − lost) / n."""
    if n <= 0:
        raise ValueError("n must be positive")
    d = (won - lost) / n
    var = ((won + lost) - (won - lost) ** 2 / n) / (n * n)
    half = NormalDist().inv_cdf(0.5 + level / 2) * math.sqrt(max(var, 0.0))
    return (d - half, d + half)


def detectable_difference(n: int, discordant_rate: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest difference of accuracies a paired test on ``n`` items sees with this power.

    Normal approximation: with a share q of discordant items, the difference's standard error
    is about sqrt(q / n), so the test detects |Δ| ≥ (z_{1−α/2} + z_power) · sqrt(q / n).
    """
    if n <= 0:
        raise ValueError("n must be positive")
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return z * math.sqrt(max(discordant_rate, 1.0 / n) / n)


@dataclass
class Comparison:
    """A paired comparison of run B against run A on the same items."""

    n: int
    accuracy_a: float
    accuracy_b: float
    difference: float  # B − A
    ci95: tuple[float, float]
    won: int  # B right, A wrong
    lost: int  # A right, B wrong
    p_value: float  # exact McNemar, two-sided
    detectable: float  # smallest |difference| this test sees with 80% power at α = 0.05
    label_a: str = "A"
    label_b: str = "B"

    def lines(self) -> list[str]:
        lo, hi = self.ci95
        return [
            f"{self.label_a}: {self.accuracy_a:.1%}   {self.label_b}: {self.accuracy_b:.1%}   ({self.n} items)",
            f"difference (B − A): {self.difference * 100:+.1f} points, 95% CI [{lo * 100:+.1f}, {hi * 100:+.1f}]",
            f"B won {self.won}, lost {self.lost} (items where exactly one is right); exact McNemar p = "
            f"{self.p_value:.3g}",
            f"this test sees differences of about ±{self.detectable * 100:.1f} points (80% power, α = 0.05)",
        ]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci95"] = list(self.ci95)
        return d


def compare_outcomes(
    a: Mapping[str, bool], b: Mapping[str, bool], label_a: str = "A", label_b: str = "B"
) -> Comparison:
    """Compare per-item correctness keyed by item id; refuses two runs over different items."""
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        example = (only_a or only_b)[0]
        raise T2Error(
            f"the two runs are over different items ({len(only_a)} only in {label_a}, {len(only_b)} only "
            f"in {label_b}, e.g. {example!r}); a paired comparison needs the same items in both"
        )
    if not a:
        raise T2Error("nothing to compare: both runs are empty")
    n = len(a)
    won = sum(1 for i in a if b[i] and not a[i])
    lost = sum(1 for i in a if a[i] and not b[i])
    acc_a = sum(map(bool, a.values())) / n
    acc_b = sum(map(bool, b.values())) / n
    return Comparison(
        n=n,
        accuracy_a=acc_a,
        accuracy_b=acc_b,
        difference=acc_b - acc_a,
        ci95=paired_ci(won, lost, n),
        won=won,
        lost=lost,
        p_value=mcnemar_exact(won, lost),
        detectable=detectable_difference(n, (won + lost) / n),
        label_a=label_a,
        label_b=label_b,
    )


def read_report(path: str | Path) -> tuple[dict[str, Any], dict[str, bool]]:
    """A ``t2 eval`` report and its per-item correctness (from ``<report>.items.jsonl``)."""
    path = Path(path)
    if not path.is_file():
        raise T2Error(f"report {str(path)!r} does not exist (write one with `t2 eval ... --out {path}`)")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise T2Error(f"{str(path)!r} is not a JSON report ({exc.msg})") from None
    items = path.with_name(path.name + ".items.jsonl")
    if not items.is_file():
        raise T2Error(f"{str(items)!r} is missing: t2 compare needs the per-item file written next to the report")
    outcomes: dict[str, bool] = {}
    with open(items, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                outcomes[str(row["id"])] = bool(row["correct"])
    return report, outcomes


def compare_reports(path_a: str | Path, path_b: str | Path) -> tuple[Comparison, dict[str, Any], dict[str, Any]]:
    """Compare two ``t2 eval`` reports (B against A); both must be over the same task, split and items."""
    rep_a, out_a = read_report(path_a)
    rep_b, out_b = read_report(path_b)
    for key in ("task", "split"):
        if rep_a.get(key) != rep_b.get(key):
            raise T2Error(f"the reports are for different {key}s ({rep_a.get(key)!r} vs {rep_b.get(key)!r})")
    modes = [_mode(r) for r in (rep_a, rep_b)]
    if modes[0] != modes[1]:
        raise T2Error(f"the reports use different answer modes ({modes[0]} vs {modes[1]}); compare like with like")
    for rep, outcomes, path in ((rep_a, out_a, path_a), (rep_b, out_b, path_b)):
        if "n" in rep and rep["n"] != len(outcomes):
            raise T2Error(
                f"{path}: the report counts {rep['n']} items but its per-item file holds {len(outcomes)} "
                "(it was reused with another --limit); evaluate into a fresh --out"
            )
    cmp = compare_outcomes(out_a, out_b, label_a=_label(rep_a, path_a), label_b=_label(rep_b, path_b))
    return cmp, rep_a, rep_b


def _mode(report: Mapping[str, Any]) -> str:
    """generate, or loglik with its channel and normalisation: what must match for a fair comparison."""
    extra = report.get("extra") or {}
    if extra.get("mode", "generate") == "generate":
        return "generate"
    return f"loglik/{extra.get('channel', 'cloze')}/{extra.get('norm', 'token')}"


def _label(report: Mapping[str, Any], path: str | Path) -> str:
    return str(
        report.get("expert") or report.get("adapt") or report.get("lora") or Path(path).stem
        if report.get("expert") or report.get("adapt") or report.get("lora")
        else "base"
    )


def pooled(comparisons: Sequence[Comparison]) -> Comparison:
    """One paired test over the union of several comparisons' items (e.g. across tasks)."""
    n = sum(c.n for c in comparisons)
    won = sum(c.won for c in comparisons)
    lost = sum(c.lost for c in comparisons)
    acc_a = sum(c.accuracy_a * c.n for c in comparisons) / n
    acc_b = sum(c.accuracy_b * c.n for c in comparisons) / n
    return Comparison(
        n=n,
        accuracy_a=acc_a,
        accuracy_b=acc_b,
        difference=acc_b - acc_a,
        ci95=paired_ci(won, lost, n),
        won=won,
        lost=lost,
        p_value=mcnemar_exact(won, lost),
        detectable=detectable_difference(n, (won + lost) / n),
        label_a="A (pooled)",
        label_b="B (pooled)",
    )
