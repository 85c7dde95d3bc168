"""What ``torchrepro check`` found: the verdict, each run, the first divergence and why.

Examples:
    >>> runs = [RunOutcome(1, "run1.jsonl", steps=2), RunOutcome(2, "run2.jsonl", steps=2)]
    >>> report = CheckReport(IDENTICAL, ["python", "train.py"], 3, runs, steps_compared=2)
    >>> print(report.render())
    bitwise identical: 2 runs, 2 steps compared
      environment: identical
    >>> report.exit_code
    <ExitCode.OK: 0>
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torchrepro.compare import Diagnosis, EnvDifference, describe_difference, render_causes
from torchrepro.compare.diff import render_growth
from torchrepro.compare.sizes import Gap
from torchrepro.errors import ExitCode
from torchrepro.localize import Localization
from torchrepro.records.format import STEPS, section_of

__all__ = [
    "DIVERGED",
    "FAILED",
    "IDENTICAL",
    "CheckReport",
    "Divergence",
    "RunOutcome",
    "TrainingProcess",
    "command_words",
]

IDENTICAL, DIVERGED, FAILED = "identical", "diverged", "failed"
_EXIT_CODES = {IDENTICAL: ExitCode.OK, DIVERGED: ExitCode.FINDING, FAILED: ExitCode.RUN_FAILED}


@dataclass
class RunOutcome:
    """One run of the command.

    Attributes:
        index: 1-based run number.
        record: Path of its record file.
        name: ``"run"``; ``"resumed"`` for the second leg of a resumed run; ``"replay"``
            for a localization replay.
        steps: Entries recorded, all its training processes together.
        returncode: Exit status, or None if check stopped it (early stop).
        stopped: Whether check stopped it.
        stderr_tail: The last lines of its standard error.
        processes: How many of its processes trained (wrote a record).
    """

    index: int
    record: str
    name: str = "run"
    steps: int = 0
    returncode: int | None = None
    stopped: bool = False
    stderr_tail: str = ""
    processes: int = 0


def command_words(argv: Sequence[str], width: int = 80) -> str:
    """A process's command line, short enough for one line of the report.

    Paths are cut to their last part; a line longer than ``width`` ends in "...".

    Examples:
        >>> command_words(["/venv/bin/python", "/home/me/train.py", "--lr", "0.1"])
        'python train.py --lr 0.1'
    """
    words = [os.path.basename(w) if i == 0 or os.path.isabs(w) else w for i, w in enumerate(argv)]
    text = shlex.join(words) if words else "(unknown command line)"
    return text if len(text) <= width else text[: width - 3] + "..."


@dataclass(frozen=True)
class TrainingProcess:
    """A training process of the command, compared across the runs.

    Attributes:
        order: Its place, 1-based, among the training processes of the first run, by start.
        command: Its command line (:func:`command_words`).
        steps: Steps compared.
    """

    order: int
    command: str
    steps: int


@dataclass(frozen=True)
class Divergence:
    """The first entry at which run ``b`` differs from run ``a``.

    Under torchrun, ``rank`` is the rank where the difference appears first (its batch or
    logged values before the all-reduced gradients every rank shares), ``ranks`` every rank
    that differs at that entry; both stay empty for a single process.

    ``process`` and ``argv`` name the training process where it is (its place among the
    training processes of run ``a``, by start, and its command line). ``missing_in`` is set
    when the finding is a training process that ran in one run and not in the other: run
    ``missing_in`` has no process like training process ``process`` of the other run.

    Examples:
        >>> d = Divergence(1, 2, entry=3, step=3, optimizer=0, keys=("grads.fc.weight",))
        >>> d.section, d.describe()
        ('grads', 'gradients of fc.weight')
        >>> Divergence(1, 2, 0, None, None, (), process=2, argv=("python", "b.py"),
        ...            missing_in=2).describe()
        'the training processes: run 2 has none with the command line of process 2 of run 1'
    """

    a: int
    b: int
    entry: int
    step: int | None
    optimizer: int | None
    keys: tuple[str, ...]
    rank: int | None = None
    ranks: tuple[int, ...] = ()
    process: int | None = None
    argv: tuple[str, ...] = ()
    missing_in: int | None = None
    gap: Gap | None = None

    @property
    def section(self) -> str:
        """Where the first difference is: batch, rng, log, grads, params or steps."""
        return section_of(self.keys[0]) if self.keys else STEPS

    @property
    def present_in(self) -> int:
        """The run that has the process (the other one than ``missing_in``)."""
        return self.a if self.missing_in == self.b else self.b

    def describe(self) -> str:
        """The first differing record, in words."""
        if self.missing_in is not None:
            return (
                f"the training processes: run {self.missing_in} has none with the command "
                f"line of process {self.process} of run {self.present_in}"
            )
        return describe_difference(self.keys)


@dataclass
class CheckReport:
    """What ``check`` found. ``render()`` is the text the command prints.

    ``diagnosis`` is the category of the first divergence and the evidence it rests on
    (None when the runs did not diverge); ``notes`` what the comparison saw besides it, an
    RNG state that differs while every computed value matches among them.
    """

    verdict: str
    command: list[str]
    seed: int | None
    runs: list[RunOutcome]
    steps_compared: int = 0
    divergence: Divergence | None = None
    localization: Localization | None = None
    environment: list[EnvDifference] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)
    message: str = ""
    series: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    resume_at: int | None = None
    threads: str | None = None
    notes: list[str] = field(default_factory=list)
    processes: list[TrainingProcess] = field(default_factory=list)
    growth: list[float] = field(default_factory=list)
    diagnosis: Diagnosis | None = None

    @property
    def exit_code(self) -> ExitCode:
        """OK (0) identical, FINDING (1) diverged, RUN_FAILED (3) a run failed."""
        return _EXIT_CODES[self.verdict]

    def to_json(self) -> dict[str, Any]:
        """The full report as JSON-serialisable data (``--json``)."""
        return {
            "verdict": self.verdict,
            "exit_code": int(self.exit_code),
            "command": self.command,
            "seed": self.seed,
            "steps_compared": self.steps_compared,
            "runs": [vars(run) for run in self.runs],
            "divergence": None
            if self.divergence is None
            else {
                **vars(self.divergence),
                "section": self.divergence.section,
                "gap": None
                if self.divergence.gap is None
                else {**vars(self.divergence.gap), "relative": self.divergence.gap.relative},
            },
            "growth": self.growth,
            "localization": None if self.localization is None else vars(self.localization),
            "environment": [vars(d) for d in self.environment],
            "causes": self.causes,
            "diagnosis": None if self.diagnosis is None else vars(self.diagnosis),
            "message": self.message,
            "series": self.series,
            "resume_at": self.resume_at,
            "threads": self.threads,
            "notes": self.notes,
            "processes": [vars(process) for process in self.processes],
        }

    def render(self) -> str:
        """The human-readable verdict."""
        if self.verdict == FAILED:
            return "\n".join(self._failure())
        lines = self._identical() if self.verdict == IDENTICAL else self._divergence()
        lines += [f"  {note}" for note in self.notes]
        if self.threads is not None:
            lines.append(f"  threads: OMP_NUM_THREADS={self.threads} in every run")
        if self.environment:
            lines.append(f"  environment: {len(self.environment)} difference(s)")
            lines += [f"    {e.key}: {e.a} vs {e.b} ({e.note})" for e in self.environment]
        else:
            lines.append("  environment: identical")
        causes = self.causes
        if self.diagnosis is not None:
            lines += self.diagnosis.render(indent="  ")
            causes = [cause for cause in causes if cause != self.diagnosis.cause]  # shown above
        lines += render_causes(causes, indent="  ")
        return "\n".join(lines)

    def _failure(self) -> list[str]:
        lines = [f"FAILED: {self.message}"]
        for run in self.runs:
            if run.stderr_tail and not run.stopped and run.returncode not in (0, None):
                lines.append(
                    f"  run {run.index} exited with status {run.returncode}; its stderr ends with:"
                )
                lines += [f"    {line}" for line in run.stderr_tail.splitlines()]
        return lines

    def _identical(self) -> list[str]:
        runs = sum(run.name == "run" for run in self.runs)
        resumed = (
            ""
            if self.resume_at is None
            else f" (run 2 stopped after step {self.resume_at} and resumed in a new process)"
        )
        several = f"{len(self.processes)} training processes, " if len(self.processes) > 1 else ""
        lines = [
            f"bitwise identical: {runs} runs, {several}{self.steps_compared} steps compared"
            f"{resumed}"
        ]
        if several:
            lines += [f"  process {p.order}: {p.command}, {p.steps} steps" for p in self.processes]
        return lines

    def _divergence(self) -> list[str]:
        d = self.divergence
        assert d is not None, "a diverged report has a divergence"
        if d.missing_in is not None:
            return [
                f"DIVERGED: training process {d.process} of run {d.present_in} did not run in "
                f"run {d.missing_in} ({self.steps_compared} steps compared)",
                f"  missing process: {command_words(d.argv)}",
            ]
        after_resume = self.resume_at is not None and d.entry >= self.resume_at
        lines = [
            f"DIVERGED at step {d.step}"
            + (f" on rank {d.rank}" if d.rank is not None else "")
            + f" (of {self.steps_compared} compared)"
            + (f", run {d.b} vs run {d.a}" if d.b != 2 or d.a != 1 else "")
            + (" after the resume" if after_resume else ""),
            f"  first differing record: {d.describe()}",
        ]
        # Named when the command is not itself the one training: several trainings, or
        # one started by a wrapper (a shell, torchrun) that may start others.
        trainings = max([len(self.processes), *(run.processes for run in self.runs)])
        if d.process is not None and (trainings > 1 or list(d.argv) != self.command):
            lines.insert(1, f"  in training process {d.process}: {command_words(d.argv)}")
        if len(d.ranks) > 1:
            lines.append(
                "  ranks that differ at that step: "
                + ", ".join(map(str, d.ranks))
                + f" (rank {d.rank} first)"
            )
        if d.gap is not None:
            lines.append(f"  size: {d.gap.describe()}")
        growth = render_growth(self.growth, d.step)
        if d.gap is not None and not growth:
            growth = [
                "  growth: not measured (check stops the runs at the first difference; "
                "with --plot they run on)"
            ]
        lines += growth
        if self.localization is not None:
            lines.append(f"  first differing module: {self.localization.describe()}")
        return lines
