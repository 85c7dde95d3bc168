"""``torchrepro check``: run a training several times, compare, and say where and why it parts.

Each run is a separate process started under ``torchrepro run`` seeding with the recorder
on (parameters, gradients, the batch and RNG digests every optimizer step), with no
change to the script. In lockstep mode (the default) the runs go side by side and their
records are compared as they grow: the first divergence stops them all, so a divergence at
step 5 of a 10,000-step training costs about 5 steps. Then both runs are replayed up to that
step with the op tracer of :mod:`torchrepro.localize` to name the module and op, and the
environment manifests are compared.

Exit status of the command: 0 identical, 1 diverged, 2 usage error, 3 a run failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from torchrepro import localize as loc
from torchrepro._derive import SeedLike
from torchrepro.compare import EnvDifference, differing_values, environment_differences
from torchrepro.distributed import REPLICA_EVERY_ENV
from torchrepro.errors import CheckError, RecordError
from torchrepro.launch import NO_SEED_ENV, child_environment
from torchrepro.record import FORMAT
from torchrepro.seeding import resolve_seed

IDENTICAL, DIVERGED, FAILED = "identical", "diverged", "failed"
EXIT_CODES = {IDENTICAL: 0, DIVERGED: 1, FAILED: 3}
RUN_INDEX_ENV = "TORCHREPRO_RUN"
# The resume protocol of --resume-at: a script that honours these stops after step K and
# saves its checkpoint in the folder, or resumes from it (examples/resume.py does).
STOP_AT_ENV = "TORCHREPRO_STOP_AT"
RESUME_ENV = "TORCHREPRO_RESUME"
CHECKPOINT_DIR_ENV = "TORCHREPRO_CHECKPOINT_DIR"
_POLL_SECONDS = 0.02
_SECTION_WORDS = {
    "batch": "the input batch",
    "rng": "RNG state",
    "log": "logged value",
    "grads": "gradients",
    "params": "parameters",
}


@dataclass
class RunOutcome:
    """One run of the command.

    Attributes:
        index: 1-based run number.
        record: Path of its record file.
        name: ``"run"``; ``"resumed"`` for the second leg of a resumed run; ``"replay"``
            for a localization replay.
        steps: Entries recorded.
        returncode: Exit status, or None if check stopped it (early stop).
        stderr_tail: The last lines of its standard error.
    """

    index: int
    record: str
    name: str = "run"
    steps: int = 0
    returncode: int | None = None
    stopped: bool = False
    stderr_tail: str = ""


@dataclass(frozen=True)
class Divergence:
    """The first entry at which run ``b`` differs from run ``a``.

    Under torchrun, ``rank`` is the rank where the difference appears first (its batch or
    logged values before the all-reduced gradients every rank shares), ``ranks`` every rank
    that differs at that entry; both stay empty for a single process.
    """

    a: int
    b: int
    entry: int
    step: int | None
    optimizer: int | None
    keys: tuple[str, ...]
    rank: int | None = None
    ranks: tuple[int, ...] = ()

    @property
    def section(self) -> str:
        """Where the first difference is: batch, rng, log, grads, params or steps."""
        return self.keys[0].split(".", 1)[0].split("[", 1)[0] if self.keys else "steps"

    def describe(self) -> str:
        """The first differing record, in words."""
        if not self.keys:
            return "the runs recorded a different number of steps"
        key = self.keys[0]
        section = self.section
        name = key.split(".", 1)[1] if "." in key else key
        if section == "batch":
            return f"the input batch ({key})"
        more = f" (+{len(self.keys) - 1} more)" if len(self.keys) > 1 else ""
        return f"{_SECTION_WORDS.get(section, section)} of {name}{more}"


@dataclass
class CheckReport:
    """What ``check`` found. ``render()`` is the text the command prints."""

    verdict: str
    command: list[str]
    seed: int | None
    runs: list[RunOutcome]
    steps_compared: int = 0
    divergence: Divergence | None = None
    localization: loc.Localization | None = None
    environment: list[EnvDifference] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)
    message: str = ""
    series: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    resume_at: int | None = None
    threads: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 identical, 1 diverged, 3 a run failed."""
        return EXIT_CODES[self.verdict]

    def to_json(self) -> dict[str, Any]:
        """The full report as JSON-serialisable data (``--json``)."""
        return {
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "command": self.command,
            "seed": self.seed,
            "steps_compared": self.steps_compared,
            "runs": [vars(run) for run in self.runs],
            "divergence": None
            if self.divergence is None
            else {**vars(self.divergence), "section": self.divergence.section},
            "localization": None if self.localization is None else vars(self.localization),
            "environment": [vars(d) for d in self.environment],
            "causes": self.causes,
            "message": self.message,
            "series": self.series,
            "resume_at": self.resume_at,
            "threads": self.threads,
            "notes": self.notes,
        }

    def render(self) -> str:
        """The human-readable verdict."""
        lines: list[str] = []
        if self.verdict == FAILED:
            lines.append(f"FAILED: {self.message}")
            for run in self.runs:
                if run.stderr_tail and not run.stopped and run.returncode not in (0, None):
                    lines.append(
                        f"  run {run.index} exited with status {run.returncode}; "
                        "its stderr ends with:"
                    )
                    lines += [f"    {line}" for line in run.stderr_tail.splitlines()]
            return "\n".join(lines)
        if self.verdict == IDENTICAL:
            runs = sum(run.name == "run" for run in self.runs)
            resumed = (
                ""
                if self.resume_at is None
                else (f" (run 2 stopped after step {self.resume_at} and resumed in a new process)")
            )
            lines.append(
                f"bitwise identical: {runs} runs, {self.steps_compared} steps compared{resumed}"
            )
        else:
            d = self.divergence
            assert d is not None
            lines.append(
                f"DIVERGED at step {d.step}"
                + (f" on rank {d.rank}" if d.rank is not None else "")
                + f" (of {self.steps_compared} compared)"
                + (f", run {d.b} vs run {d.a}" if d.b != 2 or d.a != 1 else "")
                + (
                    " after the resume"
                    if self.resume_at is not None and d.entry >= self.resume_at
                    else ""
                )
            )
            lines.append(f"  first differing record: {d.describe()}")
            if len(d.ranks) > 1:
                lines.append(
                    "  ranks that differ at that step: "
                    + ", ".join(map(str, d.ranks))
                    + f" (rank {d.rank} first)"
                )
            if self.localization is not None:
                lines.append(f"  first differing module: {self.localization.describe()}")
        lines += [f"  {note}" for note in self.notes]
        if self.threads is not None:
            lines.append(f"  threads: OMP_NUM_THREADS={self.threads} in every run")
        if self.environment:
            lines.append(f"  environment: {len(self.environment)} difference(s)")
            lines += [f"    {e.key}: {e.a} vs {e.b} ({e.note})" for e in self.environment]
        else:
            lines.append("  environment: identical")
        if self.causes:
            lines.append("  likely causes: " + self.causes[0])
            lines += [f"                 {cause}" for cause in self.causes[1:]]
        return "\n".join(lines)


class _FileTail:
    """Reads the complete lines appended to a record file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.buffer = ""
        self.offset = 0
        self.header: dict[str, Any] | None = None
        self.entries: list[dict[str, Any]] = []

    def poll(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as file:
                file.seek(self.offset)
                chunk = file.read()
                self.offset = file.tell()
        except FileNotFoundError:
            return
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            obj = json.loads(line)
            if self.header is None:
                if obj.get("format") != FORMAT:
                    raise RecordError(f"{self.path} is not a torchrepro record")
                self.header = obj
            else:
                self.entries.append(obj)


class _Tail:
    """The record of one run: its own file, or one file per rank under torchrun.

    With several ranks (``run1.rank0.jsonl``, ``run1.rank1.jsonl``...) entry ``i`` exists
    once every rank has written its ``i``-th step; it holds each rank's entry under
    ``"ranks"``, so runs are compared rank by rank in lockstep. The header is rank 0's.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.single = _FileTail(path)
        self.ranks: dict[int, _FileTail] = {}
        self.header: dict[str, Any] | None = None
        self.entries: list[dict[str, Any]] = []

    def poll(self) -> None:
        self.single.poll()
        if self.single.header is not None:
            self.header, self.entries = self.single.header, self.single.entries
            return
        self._discover()
        for tail in self.ranks.values():
            tail.poll()
        headers = {r: t.header for r, t in self.ranks.items() if t.header is not None}
        if not headers:
            return
        self.header = headers.get(0, next(iter(headers.values())))
        world = int(self.header.get("world_size", len(self.ranks)))
        tails = [self.ranks.get(r) for r in range(world)]
        available = min(len(t.entries) if t is not None else 0 for t in tails)
        for index in range(len(self.entries), available):
            per_rank = [t.entries[index] for t in tails if t is not None]
            first = per_rank[0]
            self.entries.append(
                {
                    "step": first.get("step"),
                    "optimizer": first.get("optimizer"),
                    "algorithm": first.get("algorithm"),
                    "ranks": per_rank,
                }
            )

    def _discover(self) -> None:
        prefix, suffix = f"{self.path.stem}.rank", self.path.suffix
        for path in self.path.parent.glob(f"{prefix}*{suffix}"):
            number = path.name[len(prefix) : len(path.name) - len(suffix)]
            if number.isdigit() and int(number) not in self.ranks:
                self.ranks[int(number)] = _FileTail(path)

    def replica_drift(self) -> list[tuple[int | None, dict[str, Any]]]:
        """Replica checks that found a rank whose parameters differ from rank 0's."""
        found = []
        for entry in self.entries:
            for rank_entry in entry.get("ranks", [entry]):
                replicas = rank_entry.get("replicas")
                if replicas and replicas.get("drifting"):
                    found.append((entry.get("step"), replicas))
                    break
        return found


@dataclass
class _Run:
    outcome: RunOutcome
    process: subprocess.Popen[bytes]
    tail: _Tail
    stderr_path: Path

    @property
    def name(self) -> str:
        return self.outcome.name

    def finished(self) -> bool:
        return self.process.poll() is not None


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Ends a run and everything it started (DataLoader workers, ranks): its process group."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail_of(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _compare(
    a: dict[str, Any], b: dict[str, Any], same_step: bool = True
) -> tuple[str, ...] | None:
    """The keys that differ between two entries in causal order, or None when they match.

    With ``same_step`` off the step numbers may differ (a resumed process counts from 0).
    """
    if a.get("optimizer") != b.get("optimizer") or (same_step and a.get("step") != b.get("step")):
        return ("steps",)
    if a.get("algorithm") != b.get("algorithm"):
        raise CheckError(
            f"the runs digested with different algorithms ({a.get('algorithm')} vs "
            f"{b.get('algorithm')}); their records cannot be compared."
        )
    return differing_values(a, b) or None


_CAUSAL_ORDER = ("steps", "batch", "rng", "log", "grads", "params")


def _section_rank(keys: tuple[str, ...]) -> int:
    section = keys[0].split(".", 1)[0].split("[", 1)[0] if keys else "steps"
    return _CAUSAL_ORDER.index(section) if section in _CAUSAL_ORDER else len(_CAUSAL_ORDER)


def _compare_entries(
    a: dict[str, Any], b: dict[str, Any], same_step: bool = True
) -> tuple[int | None, tuple[int, ...], tuple[str, ...]] | None:
    """(rank, ranks that differ, keys) of the first difference, or None when they match.

    For per-rank entries the rank named is the one whose difference comes first in causal
    order (its batch or its logged loss before anyone's all-reduced gradients), the lowest
    rank on a tie: the rank where the difference most likely started.
    """
    if "ranks" not in a or "ranks" not in b:
        keys = _compare(a, b, same_step)
        return None if keys is None else (None, (), keys)
    ours, theirs = a["ranks"], b["ranks"]
    if len(ours) != len(theirs):
        return None, (), ("steps",)
    differing = {}
    for rank, (x, y) in enumerate(zip(ours, theirs)):
        keys = _compare(x, y, same_step)
        if keys is not None:
            differing[rank] = keys
    if not differing:
        return None
    first = min(differing, key=lambda rank: (_section_rank(differing[rank]), rank))
    return first, tuple(sorted(differing)), differing[first]


class _Session:
    """Starts, watches and stops the runs of one check."""

    def __init__(
        self,
        command: Sequence[str],
        workdir: Path,
        env: dict[str, str],
        timeout: float | None,
        progress: Callable[[str], None] | None,
    ) -> None:
        self.command, self.workdir, self.env = list(command), workdir, env
        self.timeout, self.progress = timeout, progress
        self.runs: list[_Run] = []
        self.series: dict[tuple[int, int], dict[str, list[Any]]] = {}
        self._files: list[IO[bytes]] = []

    def start(self, index: int, extra: dict[str, str] | None = None, name: str = "run") -> _Run:
        record = self.workdir / f"{name}{index}.jsonl"
        stderr_path = self.workdir / f"{name}{index}.stderr"
        env = {
            **self.env,
            "TORCHREPRO_RECORD": str(record),
            RUN_INDEX_ENV: str(index),
            **(extra or {}),
        }
        stdout = open(self.workdir / f"{name}{index}.stdout", "wb")  # noqa: SIM115
        stderr = open(stderr_path, "wb")  # noqa: SIM115
        self._files += [stdout, stderr]
        try:
            process = subprocess.Popen(
                self.command,
                env=env,
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as error:
            raise CheckError(f"cannot start {self.command[0]!r}: {error.strerror}") from None
        run = _Run(RunOutcome(index, str(record), name), process, _Tail(record), stderr_path)
        self.runs.append(run)
        return run

    def stop(self, runs: Sequence[_Run]) -> None:
        """Stops the runs still going; they count as stopped by check, not as failed."""
        for run in runs:
            if run.process.poll() is None:
                run.outcome.stopped = True
                _stop(run.process)

    def close(self) -> None:
        self.stop(self.runs)
        for run in self.runs:
            run.tail.poll()
            run.outcome.steps = len(run.tail.entries)
            run.outcome.returncode = None if run.outcome.stopped else run.process.returncode
            run.outcome.stderr_tail = _tail_of(run.stderr_path)
        for file in self._files:
            file.close()

    def failed(self, runs: Sequence[_Run]) -> _Run | None:
        return next((r for r in runs if r.finished() and r.process.returncode != 0), None)

    def watch(
        self,
        runs: Sequence[_Run],
        reference: _Run | None,
        max_steps: int | None,
        stop_early: bool = True,
        skip: int = 0,
    ) -> tuple[int, Divergence | None, _Run | None]:
        """Compares the runs' records as they grow until they end, part or fail.

        ``reference`` is a run (finished, or going on) that every run is compared with;
        otherwise the first of ``runs`` is the reference. With
        ``stop_early`` off, the runs go on after a divergence (to plot how it grows).
        The first ``skip`` entries of the reference are passed over (a resumed run's
        record starts after them). Returns the entries compared, the first divergence
        and a run that failed.
        """
        started = time.monotonic()
        compared = 0
        first: Divergence | None = None
        watched = [*runs, *([reference] if reference is not None else [])]
        while True:
            for run in watched:
                run.tail.poll()
            done = all(run.finished() for run in watched)
            if done:  # read what was written between the poll and the exit
                for run in watched:
                    run.tail.poll()
            base = reference.tail if reference is not None else runs[0].tail
            others = [r.tail for r in runs if r.tail is not base]
            lengths = [len(base.entries) - skip, *(len(t.entries) for t in others)]
            available = min(lengths)
            if max_steps is not None:
                available = min(available, max_steps - skip)
            for entry in range(compared, available):
                ours = base.entries[skip + entry]
                for other in others:
                    theirs = other.entries[entry]
                    found = _compare_entries(ours, theirs, same_step=skip == 0)
                    self._count(base, other, ours, theirs, None if found is None else found[2])
                    if found is not None and first is None:
                        first = self._divergence(base, other, skip + entry, found[2])
                        first = replace(first, rank=found[0], ranks=found[1])
                compared = entry + 1
                if first is not None and stop_early:
                    return compared, first, None
                if self.progress is not None:
                    self.progress(f"steps compared: {skip + compared}")
            crashed = self.failed(runs)
            if crashed is not None:
                return compared, first, crashed
            if max_steps is not None and skip + compared >= max_steps:
                return compared, first, None
            if done:
                if first is None and len(set(lengths)) > 1:
                    other = max(others, key=lambda t: abs(len(t.entries) - lengths[0]))
                    first = self._divergence(base, other, skip + compared, ())
                return compared, first, None
            if self.timeout is not None and time.monotonic() - started > self.timeout:
                raise _Timeout()
            time.sleep(_POLL_SECONDS)

    def _count(
        self,
        base: _Tail,
        other: _Tail,
        ours: dict[str, Any],
        theirs: dict[str, Any],
        keys: tuple[str, ...] | None,
    ) -> None:
        """Per step: how many recorded values differ, and |a - b| of each logged number."""
        pair = (self._index(base), self._index(other))
        counts = self.series.setdefault(pair, {"differing": [], "log": []})
        counts["differing"].append(len(keys or ()))
        deltas = {}
        for name, a in ours.get("log", {}).items():
            b = theirs.get("log", {}).get(name)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                deltas[name] = abs(a - b)
        counts["log"].append(deltas)

    def _index(self, tail: _Tail) -> int:
        return next(run.outcome.index for run in self.runs if run.tail is tail)

    def _divergence(
        self, base: _Tail, other: _Tail, entry: int, keys: tuple[str, ...]
    ) -> Divergence:
        source = base.entries[entry] if entry < len(base.entries) else {}
        return Divergence(
            a=self._index(base),
            b=self._index(other),
            entry=entry,
            step=source.get("step", entry),
            optimizer=source.get("optimizer"),
            keys=keys,
        )


class _Timeout(Exception):
    pass


def _stop_on_signals() -> Callable[[], None]:
    """Turns SIGTERM and SIGHUP into KeyboardInterrupt; returns what puts them back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # only the main thread may set handlers

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def _trace(session: _Session, divergence: Divergence) -> loc.Localization | None:
    """Replays the two diverging runs up to the divergent entry with the op tracer on."""
    traces = []
    runs = []
    for index in (divergence.a, divergence.b):
        path = session.workdir / f"trace{index}.jsonl"
        traces.append(path)
        runs.append(
            session.start(
                index,
                {loc.TRACE_ENV: str(path), loc.TRACE_STEP_ENV: str(divergence.entry)},
                name="replay",
            )
        )
    started = time.monotonic()
    while not all(path.exists() or run.finished() for path, run in zip(traces, runs)):
        if session.timeout is not None and time.monotonic() - started > session.timeout:
            break
        time.sleep(_POLL_SECONDS)
    for run in runs:
        _stop(run.process)
    try:
        return loc.localize(loc.read_trace(traces[0]), loc.read_trace(traces[1]))
    except RecordError:
        return None


def _replica_notes(session: _Session) -> list[str]:
    """One line per run whose replica check found a rank drifting from rank 0."""
    notes = []
    for run in session.runs:
        drift = run.tail.replica_drift()
        if drift and run.name != "replay":
            step, replicas = drift[0]
            rank, name = replicas["drifting"][0]
            more = len(replicas["drifting"]) - 1
            notes.append(
                f"replicas: in {run.name} {run.outcome.index} after step {step}, rank {rank}'s "
                f"{name} differs from rank 0's" + (f" (+{more} more)" if more else "")
            )
    return notes


def _causes(
    report: CheckReport,
    deterministic: bool | str | None,
    no_seed: bool,
    headers: list[dict[str, Any]],
) -> list[str]:
    causes = [f"{e.key} differs between the runs: {e.note}" for e in report.environment]
    d, where = report.divergence, report.localization
    if d is None:
        return causes
    hashing_salted = any(
        h.get("env", {}).get("determinism", {}).get("string_hashing_randomized") for h in headers
    )
    if d.section == "batch":
        causes.append("the data differs before the model sees it: data order or augmentation")
        if hashing_salted or no_seed:
            causes.append(
                "str hashing is salted per process, so set/dict-of-str order (e.g. a "
                "file list built from a set) changes per run: set PYTHONHASHSEED, or "
                "run under torchrepro seeding (drop --no-seed)"
            )
        if no_seed:
            causes.append("this check ran without torchrepro seeding (--no-seed): try without it")
    elif d.section == "rng":
        causes.append(
            "an RNG state differs: a generator seeded differently or drawing a "
            "different number of values (e.g. data-dependent sampling)"
        )
    if where is not None and where.kind == "op":
        base = loc.op_base_name(where.op or "")
        if base in loc.NONDETERMINISTIC_OPS:
            causes.append(
                f"{base} in {where.module} has a nondeterministic CUDA kernel; try --deterministic"
            )
        else:
            causes.append(
                f"{base} in {where.module} gave different results from identical "
                "inputs: a nondeterministic kernel or a changing setting"
            )
    elif where is not None and where.kind == "input":
        causes.append(
            f"values made outside torch's ops reach {where.module} ({where.phase}): "
            "numpy or Python randomness not seeded by torchrepro, os.urandom, time, "
            "I/O or another process; seed or remove that source"
        )
    elif where is not None and where.kind in ("control-flow", "length"):
        causes.append(
            "the runs took different code paths: a branch on a value that differs "
            "(time, a random draw outside the seeded RNGs, file order)"
        )
    if where is not None and where.nondeterministic_ops:
        causes.append(
            f"ops with nondeterministic CUDA kernels ran in {where.module}: "
            + ", ".join(where.nondeterministic_ops)
        )
    if (
        not deterministic
        and d.section in ("grads", "params", "log")
        and (where is None or where.kind == "op")
    ):
        causes.append("deterministic algorithms were off: try --deterministic")
    return causes


def check(
    command: Sequence[str],
    *,
    runs: int = 2,
    max_steps: int | None = None,
    seed: SeedLike | None = None,
    deterministic: bool | str | None = None,
    lockstep: bool = True,
    no_seed: bool = False,
    localize: bool = True,
    timeout: float | None = None,
    workdir: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
    plot: str | os.PathLike[str] | None = None,
    resume_at: int | None = None,
    env: Mapping[str, str] | None = None,
) -> CheckReport:
    """Runs ``command`` ``runs`` times as separate processes and compares their records.

    Args:
        command: The command, e.g. ``["python", "train.py", "--epochs", "1"]``.
        runs: How many runs (at least 2).
        max_steps: Stop the runs after this many optimizer steps.
        seed: Root seed for every run (default: ``TORCHREPRO_SEED``, else a fresh one).
        deterministic: As for ``seed_everything``: ``None``, ``True``, ``"warn"``, ``False``.
        lockstep: Run side by side and stop at the first divergence; else one after another.
        no_seed: Record only, without torchrepro seeding: checks the script as it is.
        localize: After a divergence, replay to name the module and op.
        timeout: Seconds each phase may take before the runs count as failed.
        workdir: Where records and logs go (default: a temporary folder, removed after).
        progress: Called with a short progress text.
        plot: Write a PNG of, per step, how many recorded values differ and how far the
            logged numbers (e.g. the loss) are apart; the runs then go on after the first
            divergence. Needs matplotlib.
        resume_at: Compare one uninterrupted run with one stopped after step K and
            resumed in a new process: the second gets ``TORCHREPRO_STOP_AT=K``, then
            ``TORCHREPRO_RESUME=1``, and each run its own ``TORCHREPRO_CHECKPOINT_DIR``.
        env: Extra environment variables for every run.

    Returns:
        A :class:`CheckReport`; ``.exit_code`` is the command's exit status.

    Raises:
        CheckError: Bad arguments, or the command cannot be started.

    Example:
        >>> report = check([sys.executable, "train.py"], max_steps=20)
        >>> print(report.render())
        bitwise identical: 2 runs, 20 steps compared
    """
    if runs < 2:
        raise CheckError(f"runs must be at least 2; got {runs}. Pass --runs 2 or more.")
    if max_steps is not None and max_steps < 1:
        raise CheckError(f"max_steps must be at least 1; got {max_steps}.")
    if not command:
        raise CheckError("no command given; pass e.g. ['python', 'train.py'].")
    if resume_at is not None and (resume_at < 1 or runs != 2):
        raise CheckError(
            f"resume_at needs K >= 1 and exactly 2 runs; got K={resume_at}, runs={runs}."
        )
    with _workdir(workdir) as folder:
        root = resolve_seed(seed)
        base = child_environment(root, deterministic, {**os.environ, **(env or {})})
        base["TORCHREPRO_RECORD_WITH"] = "grads,batch,rng"
        base.setdefault(REPLICA_EVERY_ENV, "1")
        if no_seed:
            base[NO_SEED_ENV] = "1"
            for name in ("PYTHONHASHSEED", "TORCHREPRO_SEED"):
                base.pop(name, None)
                if name in os.environ:
                    base[name] = os.environ[name]
        side_by_side = lockstep or resume_at is not None
        if side_by_side and "OMP_NUM_THREADS" not in base:
            # Runs side by side share the cores: without a limit each would start one
            # thread per core and they would thrash. Every run gets the same count, so the
            # comparison stays fair; the manifest records it.
            base["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // runs))
        session = _Session(command, folder, base, timeout, progress)
        report = CheckReport(IDENTICAL, list(command), None if no_seed else root, [])
        report.resume_at = resume_at
        report.threads = base.get("OMP_NUM_THREADS")
        # Runs live in sessions of their own (so that stopping one stops its workers and
        # ranks): a terminal hang-up or a kill of check must still stop them.
        restore_signals = _stop_on_signals()
        try:
            if resume_at is not None:
                _compare_resumed(session, report, resume_at, max_steps, stop_early=plot is None)
            else:
                _compare_runs(session, report, runs, max_steps, lockstep, stop_early=plot is None)
            d = report.divergence
            if d is not None and localize and d.keys and d.section not in ("batch", "rng"):
                if d.rank is not None:
                    report.notes.append(
                        "first differing module: not localized (the op replay traces one "
                        "process; multi-rank runs are compared by their records only)"
                    )
                elif resume_at is not None and d.entry >= resume_at:
                    report.notes.append(
                        "first differing module: not localized (the replay would run "
                        "uninterrupted; the difference comes with the resume)"
                    )
                else:
                    report.localization = _trace(session, d)
        except _Timeout:
            report.verdict, report.message = FAILED, f"a run took longer than {timeout} s"
        finally:
            session.close()
            restore_signals()
        report.runs = [run.outcome for run in session.runs if run.name != "replay"]
        report.notes += _replica_notes(session)
        headers = [run.tail.header for run in session.runs[:runs] if run.tail.header]
        if len(headers) >= 2:
            report.environment = list(environment_differences(headers[0]["env"], headers[1]["env"]))
        if report.verdict != FAILED and not headers:
            report.verdict = FAILED
            report.message = (
                "no run wrote a record: was torchrepro importable by the command's "
                "Python, and did it start with -S, -I or -E?"
            )
        report.causes = _causes(report, deterministic, no_seed, headers)
        report.series = {f"{a}-{b}": values for (a, b), values in session.series.items()}
        if plot is not None:
            _plot(report, Path(plot))
        return report


def _compare_runs(
    session: _Session,
    report: CheckReport,
    runs: int,
    max_steps: int | None,
    lockstep: bool,
    stop_early: bool,
) -> None:
    if lockstep:
        started = [session.start(i) for i in range(1, runs + 1)]
        compared, divergence, crashed = session.watch(started, None, max_steps, stop_early)
        session.stop(started)
    else:
        first = session.start(1)
        compared, divergence, crashed = session.watch([first], None, max_steps, stop_early)
        session.stop([first])
        for index in range(2, runs + 1):
            if crashed is not None or (divergence is not None and stop_early):
                break
            run = session.start(index)
            compared, found, crashed = session.watch([run], first, max_steps, stop_early)
            divergence = divergence or found
            session.stop([run])
    _conclude(report, compared, divergence, crashed)


def _compare_resumed(
    session: _Session,
    report: CheckReport,
    resume_at: int,
    max_steps: int | None,
    stop_early: bool,
) -> None:
    """One uninterrupted run against one stopped after ``resume_at`` steps and resumed."""
    files = session.workdir / "checkpoints"
    full = session.start(1, {CHECKPOINT_DIR_ENV: str(files / "run1")})
    resumed_env = {CHECKPOINT_DIR_ENV: str(files / "run2")}
    first_leg = session.start(2, {**resumed_env, STOP_AT_ENV: str(resume_at)})
    compared, divergence, crashed = session.watch([full, first_leg], None, resume_at, stop_early)
    if crashed is None and divergence is None:
        try:
            code = first_leg.process.wait(session.timeout)
        except subprocess.TimeoutExpired:
            raise _Timeout() from None
        first_leg.tail.poll()
        if code != 0:
            crashed = first_leg
        elif len(first_leg.tail.entries) != resume_at:
            session.stop([full])
            report.verdict = FAILED
            report.message = (
                f"run 2 was asked to stop after step {resume_at} but recorded "
                f"{len(first_leg.tail.entries)} steps: does the script honour {STOP_AT_ENV}, "
                f"{RESUME_ENV} and {CHECKPOINT_DIR_ENV}? (examples/resume.py shows how)"
            )
            return
    if crashed is None and divergence is None:
        second_leg = session.start(2, {**resumed_env, RESUME_ENV: "1"}, name="resumed")
        more, divergence, crashed = session.watch(
            [second_leg], full, max_steps, stop_early, skip=resume_at
        )
        compared += more
    session.stop(session.runs)
    _conclude(report, compared, divergence, crashed)


def _conclude(
    report: CheckReport, compared: int, divergence: Divergence | None, crashed: _Run | None
) -> None:
    report.steps_compared = compared
    if crashed is not None:
        report.verdict = FAILED
        report.message = (
            f"run {crashed.outcome.index} exited with status "
            f"{crashed.process.returncode} after {len(crashed.tail.entries)} steps"
        )
    elif divergence is not None:
        report.verdict, report.divergence = DIVERGED, divergence
    elif compared == 0:
        report.verdict = FAILED
        report.message = (
            "the runs recorded no optimizer step: does the command call "
            "optimizer.step() in a Python that can import torchrepro?"
        )


def _plot(report: CheckReport, path: Path) -> None:
    """Per step, differing values and |a - b| of logged numbers, one line per run pair."""
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
        top.plot(values["differing"], label=f"run {pair.replace('-', ' vs ')}")
        names = sorted({name for deltas in values["log"] for name in deltas})
        for name in names:
            deltas = [d.get(name, float("nan")) for d in values["log"]]
            bottom.plot(deltas, label=f"|delta {name}|, run {pair.replace('-', ' vs ')}")
    top.set_ylabel("recorded values that differ")
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


@contextlib.contextmanager
def _workdir(path: str | os.PathLike[str] | None) -> Iterator[Path]:
    if path is not None:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="torchrepro-check-") as tmp:
        yield Path(tmp)


def check_reproducible(
    fn: Callable[[], object], runs: int = 2, steps: int | None = None, **options: Any
) -> CheckReport:
    """Runs a module-level function in ``runs`` fresh processes and compares their records.

    ``fn`` must be importable by its module name (defined at the top level of a module);
    the folder of its module is put on the runs' ``PYTHONPATH``. Options are those of
    :func:`check`.

    Example:
        >>> report = torchrepro.check_reproducible(train_one_epoch, steps=10)
        >>> report.verdict
        'identical'
    """
    module, name = fn.__module__, fn.__qualname__
    if "<" in name or module == "__main__":
        raise CheckError(
            f"{module}.{name} cannot be imported by a fresh process; define it at the top "
            "level of a module other than the script being run."
        )
    env = dict(options.pop("env", None) or {})
    file = getattr(sys.modules.get(module), "__file__", None)
    if file is not None:
        paths = [
            str(Path(file).resolve().parent),
            env.get("PYTHONPATH", os.environ.get("PYTHONPATH", "")),
        ]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    command = [
        sys.executable,
        "-c",
        f"import importlib; importlib.import_module({module!r}).{name}()",
    ]
    return check(command, runs=runs, max_steps=steps, env=env, **options)
