"""What the demo's runs measured, compared: per run, per setup, and the report it prints.

Examples:
    >>> runs = tuple(
    ...     Run("none", i, (0.5, acc), (1.2, 1.0), digest, ("a", "b"), 1.0)
    ...     for i, acc, digest in ((1, 0.6, "d1"), (2, 0.7, "d2"))
    ... )
    >>> s = SetupResult("none", "1 no seeding", runs)
    >>> s.identical, s.workers_distinct, round(s.accuracy_spread, 2)
    (False, True, 0.1)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torchrepro.check import CheckReport
from torchrepro.demo.workload import CLASSES, RUNS, SIZE, WORKERS, Scale


@dataclasses.dataclass(frozen=True)
class Run:
    """What one training process measured.

    Attributes:
        setup: "none", "recipe" or "torchrepro".
        index: 1 or 2.
        accuracy: held-out accuracy after each epoch, in [0, 1].
        loss: held-out cross-entropy after each epoch.
        digest: SHA-256 of the final parameters and buffers.
        streams: per epoch and loader worker, a digest of the worker's first augmentation
            draws of the epoch.
        seconds: wall time of the training, process start-up excluded.
    """

    setup: str
    index: int
    accuracy: tuple[float, ...]
    loss: tuple[float, ...]
    digest: str
    streams: tuple[str, ...]
    seconds: float

    @property
    def distinct_streams(self) -> int:
        """How many of the run's worker x epoch streams differ from all the others."""
        return len(set(self.streams))


@dataclasses.dataclass(frozen=True)
class SetupResult:
    """A setup's two runs, and what comparing them shows."""

    key: str
    label: str
    runs: tuple[Run, ...]

    @property
    def identical(self) -> bool:
        """Whether every run ended with bitwise-identical parameters."""
        return len({run.digest for run in self.runs}) == 1

    @property
    def workers_distinct(self) -> bool:
        """Whether, in every run, every worker x epoch stream differed from the others."""
        return all(run.distinct_streams == len(run.streams) for run in self.runs)

    @property
    def accuracy_spread(self) -> float:
        finals = [run.accuracy[-1] for run in self.runs]
        return max(finals) - min(finals)

    @property
    def widest_accuracy_spread(self) -> tuple[float, int]:
        """The largest accuracy spread after any epoch, and that epoch (1-based)."""
        spreads = [max(accs) - min(accs) for accs in zip(*(run.accuracy for run in self.runs))]
        widest = max(range(len(spreads)), key=spreads.__getitem__)
        return spreads[widest], widest + 1

    @property
    def loss_spread(self) -> float:
        finals = [run.loss[-1] for run in self.runs]
        return max(finals) - min(finals)


@dataclasses.dataclass(frozen=True)
class DemoReport:
    """Everything ``run_demo`` measured.

    Attributes:
        scale: epochs and data sizes of every run.
        setups: one entry per setup, in ``SETUPS`` order.
        seconds: wall time of the whole demo.
        png: the accuracy plot, or None when it was not written.
        png_note: why there is no plot, when there is none.
        check: ``torchrepro check`` on setup 3 (None when it was not run).
        check_command: the ``torchrepro check`` command line that repeats ``check``, as a
            user would type it (None when there is none to show).
    """

    scale: Scale
    setups: tuple[SetupResult, ...]
    seconds: float
    png: Path | None
    png_note: str | None
    check: CheckReport | None = None
    check_command: str | None = None

    def setup(self, key: str) -> SetupResult:
        """The result of setup ``key`` ("none", "recipe" or "torchrepro")."""
        return next(s for s in self.setups if s.key == key)

    def table(self) -> str:
        """The comparison table: one row per setup, cells separated by ``|``."""
        header = (
            "setup",
            "run 1 acc",
            "run 1 loss",
            "run 2 acc",
            "run 2 loss",
            "acc spread",
            "loss spread",
            "widest acc spread",
            "bitwise identical",
            "workers distinct",
        )
        rows = [header]
        for s in self.setups:
            one, two = s.runs
            counts = ", ".join(f"{r.distinct_streams}/{len(r.streams)}" for r in s.runs)
            widest = s.widest_accuracy_spread
            rows.append(
                (
                    s.label,
                    f"{100 * one.accuracy[-1]:.2f} %",
                    f"{one.loss[-1]:.4f}",
                    f"{100 * two.accuracy[-1]:.2f} %",
                    f"{two.loss[-1]:.4f}",
                    f"{100 * s.accuracy_spread:.2f} pp",
                    f"{s.loss_spread:.4f}",
                    f"{100 * widest[0]:.2f} pp, epoch {widest[1]}" if widest[0] else "0.00 pp",
                    "yes" if s.identical else "no",
                    f"{'yes' if s.workers_distinct else 'NO'}: {counts}",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = []
        for n, row in enumerate(rows):
            cells = [
                cell.ljust(w) if i in (0, 8, 9) else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths))
            ]
            lines.append("| " + " | ".join(cells) + " |")
            if n == 0:
                lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        return "\n".join(lines)

    def render(self) -> str:
        """The demo's report: what was trained, the table, the plot, the verdict."""
        scale = self.scale
        lines = [
            f"torchrepro demo: one small CNN, {scale.train} generated {SIZE}x{SIZE} images of "
            f"{len(CLASSES)} noisy shapes,",
            "random augmentation in __getitem__ (random, numpy, torch), a "
            f"{WORKERS}-worker DataLoader, {scale.epochs} epochs.",
            f"Each setup trained {RUNS} times, each run a fresh process; accuracy and loss on "
            f"{scale.test} held-out images.",
            "",
            self.table(),
            "",
            "widest acc spread: the largest gap between the two runs' accuracy after any epoch.",
            "workers distinct: per run, how many of its "
            f"{WORKERS} workers x {scale.epochs} epochs drew a first batch of augmentation "
            "unlike all the others.",
            f"{sum(len(s.runs) for s in self.setups)} runs in {self.seconds:.0f} s.",
        ]
        lines.append(f"accuracy curves: {self.png}" if self.png else f"no plot: {self.png_note}")
        lines += ["", verdict(self)]
        return "\n".join(lines)


def verdict(report: DemoReport) -> str:
    """The verdict on the torchrepro setup that ends the demo: ``torchrepro check``'s.

    The demo compares the final parameters of setup 3's two runs itself; ``torchrepro
    check`` then runs setup 3 twice more, side by side, and compares every optimizer step.

    Examples:
        >>> run = Run("torchrepro", 1, (0.6,), (1.0,), "4b960946791ac117" * 4, ("a",), 1.0)
        >>> setups = (SetupResult("torchrepro", "3 torchrepro", (run, run)),)
        >>> print(verdict(DemoReport(Scale(1, 64, 32), setups, 1.0, None, "no plot")))
        setup 3's two runs ended with bitwise-identical final parameters (sha256 4b960946791ac117)
        torchrepro check was not run
    """
    s = report.setup("torchrepro")
    digests = ", ".join(sorted({run.digest[:16] for run in s.runs}))
    same = "bitwise-identical" if s.identical else "DIFFERENT"
    lines = [f"setup 3's two runs ended with {same} final parameters (sha256 {digests})"]
    if report.check is None:
        lines.append("torchrepro check was not run")
    else:
        if report.check_command is not None:
            lines.append(f"$ {report.check_command}")
        lines.append(report.check.render())
    return "\n".join(lines)
