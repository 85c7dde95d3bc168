"""The ``--plot`` of ``torchrepro check``: how the runs drift apart, step by step."""

from __future__ import annotations

from pathlib import Path

from torchrepro.check.report import CheckReport
from torchrepro.errors import CheckError

__all__ = ["plot"]


def plot(report: CheckReport, path: Path) -> None:
    """Draws, per step and run pair, how far apart the parameters are (the largest relative
    gap of their sizes, a lower bound) and |a - b| of logged numbers.

    Raises:
        CheckError: matplotlib is not installed.

    Examples:
        >>> report = CheckReport("diverged", ["python", "train.py"], 3, [])
        >>> report.series = {"1-2": {"differing": [0, 0, 4], "gap": [0.0, 0.0, 1e-7],
        ...                          "log": [{}, {}, {"loss": 0.1}]}}
        >>> plot(report, Path("check.png"))
        >>> Path("check.png").read_bytes()[:4]
        b'\\x89PNG'
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CheckError(
            "--plot needs matplotlib; install it with `pip install torchrepro[plot]`."
        ) from None
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 6))
    for pair, values in report.series.items():
        gaps = values.get("gap") or values["differing"]
        top.plot(gaps, label=f"run {pair.replace('-', ' vs ')}")
        names = sorted({name for deltas in values["log"] for name in deltas})
        for name in names:
            deltas = [d.get(name, float("nan")) for d in values["log"]]
            bottom.plot(deltas, label=f"|delta {name}|, run {pair.replace('-', ' vs ')}")
    top.set_ylabel("largest relative gap of a parameter")
    if any(values.get("gap") for values in report.series.values()):
        top.set_yscale("symlog", linthresh=1e-12)
    top.set_title(f"torchrepro check: {report.verdict}")
    bottom.set_ylabel("|a - b| of logged values")
    bottom.set_xlabel("optimizer step")
    if any(values["log"] and any(values["log"]) for values in report.series.values()):
        bottom.set_yscale("symlog", linthresh=1e-12)
    for axis in (top, bottom):
        if axis.lines:
            axis.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
