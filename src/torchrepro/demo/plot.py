"""The demo's accuracy plot: one panel per setup, both runs' held-out accuracy per epoch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torchrepro.demo.report import SetupResult

PNG_NAME = "torchrepro-demo.png"

_STYLES = {"none": "tab:red", "recipe": "tab:orange", "torchrepro": "tab:blue"}


def plot(report_setups: Sequence[SetupResult], path: Path) -> str | None:
    """Writes the accuracy curves of every run to ``path`` (PNG); returns why not, or None.

    matplotlib is optional (``pip install 'torchrepro[plot]'``); without it nothing is
    written and the reason is returned.

    Examples:
        >>> from torchrepro.demo.report import Run
        >>> run = Run("torchrepro", 1, (0.5, 0.6), (1.1, 1.0), "d", ("a", "b"), 1.0)
        >>> plot([SetupResult("torchrepro", "3 torchrepro", (run, run))], Path(PNG_NAME))
        >>> Path(PNG_NAME).read_bytes()[1:4]
        b'PNG'
    """
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed; pip install 'torchrepro[plot]' for the PNG"
    matplotlib.use("Agg")  # no display needed, and none is touched
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    # One panel per setup: two runs that repeat draw one curve, two that do not draw two.
    figure, panels = plt.subplots(
        1, len(report_setups), figsize=(4 * len(report_setups), 3.8), sharey=True, squeeze=False
    )
    for axes, s in zip(panels[0], report_setups):
        for run in s.runs:
            axes.plot(
                range(1, len(run.accuracy) + 1),
                [100 * a for a in run.accuracy],
                color=_STYLES.get(s.key, "black"),
                linestyle="-" if run.index == 1 else "--",
                marker="o" if run.index == 1 else "x",
                label=f"run {run.index}",
            )
        axes.set_title(
            f"{s.label}\nbitwise identical: {'yes' if s.identical else 'no'}; "
            f"workers distinct: {'yes' if s.workers_distinct else 'NO'}",
            fontsize=10,
        )
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, loc="lower right")
    panels[0][0].set_ylabel("held-out accuracy (%)")
    figure.suptitle("torchrepro demo: each setup trained twice, in fresh processes")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    plt.close(figure)
    return None
