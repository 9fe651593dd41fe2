"""Charts shared by the bench scripts: accuracy bars with their 95% intervals, one panel per task."""

from __future__ import annotations

from pathlib import Path


def accuracy_panels(
    panels: dict[str, list[tuple[str, float, list[float]]]],
    path: Path,
    ylabel: str = "accuracy %",
    width: float = 4.2,
    rotate: bool = True,
) -> None:
    """``panels``: title → [(bar label, accuracy in [0, 1], [ci low, ci high])]; writes a PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from transformer_squared.fileio import atomic_path

    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 3.6), squeeze=False)
    for ax, (title, bars) in zip(axes[0], panels.items(), strict=True):
        acc = [100 * a for _, a, _ in bars]
        err = [[100 * (a - ci[0]) for _, a, ci in bars], [100 * (ci[1] - a) for _, a, ci in bars]]
        ax.bar(range(len(bars)), acc, yerr=err, capsize=3, color="#4C72B0")
        ax.set_xticks(
            range(len(bars)),
            [label for label, _, _ in bars],
            rotation=45 if rotate else 0,
            ha="right" if rotate else "center",
        )
        ax.set_title(title)
        ax.set_ylabel(ylabel)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
