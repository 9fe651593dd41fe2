"""What a run reports: rows in ``metrics.jsonl`` (and tensorboard), ``train_curve.png``, messages.

One row per step (and one for the step-0 evaluation) goes to ``metrics.jsonl`` as it happens; a
resumed run first cuts the file back to its checkpoint's step (:func:`read_metrics`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..fileio import append_jsonl, atomic_path, write_text
from .run_dir import METRICS_NAME, PLOT_NAME

log = logging.getLogger(__name__)


def say(text: str, progress: bool) -> None:
    """A line for the user: above the progress bar, or to the log when there is none."""
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(text)
    else:
        log.info(text)


def progress_postfix(row: dict[str, Any], best_val: float | None) -> dict[str, str]:
    """The progress bar's numbers after a step."""
    post = {}
    if row.get("reward_mean") is not None:
        post["reward"] = f"{row['reward_mean']:+.3f}"
    if row.get("kl") is not None:
        post["kl"] = f"{row['kl']:.3g}"
    if row.get("nll_per_token") is not None:
        post["nll"] = f"{row['nll_per_token']:.3f}"
    if best_val is not None:
        post["best_val"] = f"{best_val:.1%}"
    return post


def log_row(out: Path, row: dict[str, Any], writer=None) -> None:
    """Append ``row`` to ``out``/metrics.jsonl, and its numbers to tensorboard when ``writer`` is one."""
    append_jsonl(out / METRICS_NAME, [row])
    if writer is not None:
        for key, value in row.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and key != "step":
                writer.add_scalar(key, value, row["step"])


def read_metrics(out: Path, up_to_step: int) -> list[dict[str, Any]]:
    """The rows of ``out``/metrics.jsonl up to ``up_to_step`` (a line cut by a kill is skipped)."""
    path = out / METRICS_NAME
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            if isinstance(row, dict) and row.get("step", 1 << 60) <= up_to_step:
                rows.append(row)
    return rows


def write_metrics(out: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Replace ``out``/metrics.jsonl with ``rows``."""
    write_text(out / METRICS_NAME, "".join(json.dumps(r) + "\n" for r in rows))


def tensorboard_writer(out: Path):
    """A SummaryWriter logging to ``out``/tensorboard, or None (with a warning) without tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning(
            "--tensorboard needs the tensorboard package (pip install tensorboard); logging to metrics.jsonl only"
        )
        return None
    return SummaryWriter(log_dir=str(out / "tensorboard"))


def plot(out: Path, history: Sequence[dict[str, Any]], title: str) -> None:
    """``out``/train_curve.png, or a warning when matplotlib is not installed."""
    try:
        write_plot(out / PLOT_NAME, history, title=title)
    except ImportError:
        log.warning("matplotlib is not installed; no %s", PLOT_NAME)


def write_plot(path: str | Path, history: Sequence[dict[str, Any]], title: str = "") -> None:
    """Draw reward (or SFT NLL) and val accuracy against the step to a PNG (no pyplot, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    train = [r for r in history if r.get("step", 0) > 0]
    key, label = (
        ("reward_mean", "mean reward")
        if any(r.get("reward_mean") is not None for r in train)
        else ("nll_per_token", "NLL per token")
    )
    pts = [(r["step"], r[key]) for r in train if r.get(key) is not None]
    if pts:
        ax.plot(*zip(*pts, strict=True), color="tab:blue", lw=1, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(label, color="tab:blue")
    val = [(r["step"], r["val_accuracy"]) for r in history if r.get("val_accuracy") is not None]
    if val:
        ax2 = ax.twinx()
        ax2.plot(*zip(*val, strict=True), color="tab:orange", marker="o", lw=1.5, label="val accuracy")
        ax2.set_ylabel("val accuracy", color="tab:orange")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def warn_if_untrained(result):
    """Warn when the saved weights are the step-0 ones (the identity: the run saved the base model)."""
    if result.best_step == 0 and os.environ.get("RANK", "0") == "0":
        acc = "" if result.best_val_accuracy is None else f" ({result.best_val_accuracy:.1%})"
        log.warning(
            "the weights saved in %s are the untrained step-0 ones (the base model): no later step beat "
            "step 0 on val%s, so nothing learned was kept; train longer, change --lr, or check the task's "
            "rewards",
            result.out,
            acc,
        )
    return result


__all__ = [
    "log_row",
    "plot",
    "progress_postfix",
    "read_metrics",
    "say",
    "tensorboard_writer",
    "warn_if_untrained",
    "write_metrics",
    "write_plot",
]
