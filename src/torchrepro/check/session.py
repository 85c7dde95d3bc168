"""The runs of one ``torchrepro check``: starting them, watching their records, stopping them.

Each run is a process in a session of its own (so that stopping it stops its DataLoader
workers and torchrun's ranks too), with its record read live through
:class:`~torchrepro.records.RecordTail` and compared entry by entry as it grows.

Example:
    >>> session = Session([sys.executable, "-c", "pass"], Path("."), dict(os.environ), 60, None)
    >>> run = session.start(1)
    >>> session.watch([run], None, None)  # it never steps: nothing compared, nothing failed
    (0, None, None)
    >>> session.close(); run.outcome.returncode
    0
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from torchrepro import _contract
from torchrepro.check.report import Divergence, RunOutcome
from torchrepro.compare import compare_entries
from torchrepro.errors import CheckError
from torchrepro.records.format import LOG, OPTIMIZER, STEP
from torchrepro.records.tail import RecordTail

__all__ = ["Run", "RunTimeout", "Session", "stop_on_signals", "stop_process"]

POLL_SECONDS = 0.02


class RunTimeout(Exception):
    """A phase of the check took longer than its timeout."""


@dataclass
class Run:
    """A started run: its outcome so far, its process and its record."""

    outcome: RunOutcome
    process: subprocess.Popen[bytes]
    tail: RecordTail
    stderr_path: Path

    @property
    def name(self) -> str:
        return self.outcome.name

    def finished(self) -> bool:
        return self.process.poll() is not None


def stop_process(process: subprocess.Popen[bytes]) -> None:
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


def stop_on_signals() -> Callable[[], None]:
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


class Session:
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
        self.runs: list[Run] = []
        self.series: dict[tuple[int, int], dict[str, list[Any]]] = {}
        self._files: list[IO[bytes]] = []

    def start(self, index: int, extra: dict[str, str] | None = None, name: str = "run") -> Run:
        """Starts run ``index`` (``name`` tells a resumed leg or a replay apart)."""
        record = self.workdir / f"{name}{index}.jsonl"
        stderr_path = self.workdir / f"{name}{index}.stderr"
        env = {
            **self.env,
            _contract.RECORD: str(record),
            _contract.RUN_INDEX: str(index),
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
        run = Run(RunOutcome(index, str(record), name), process, RecordTail(record), stderr_path)
        self.runs.append(run)
        return run

    def stop(self, runs: Sequence[Run]) -> None:
        """Stops the runs still going; they count as stopped by check, not as failed."""
        for run in runs:
            if run.process.poll() is None:
                run.outcome.stopped = True
                stop_process(run.process)

    def close(self) -> None:
        """Stops every run, closes their logs and fills in their outcomes."""
        self.stop(self.runs)
        for file in self._files:
            file.close()
        for run in self.runs:
            run.outcome.returncode = None if run.outcome.stopped else run.process.returncode
            run.outcome.stderr_tail = _tail_of(run.stderr_path)
            run.tail.poll()
            run.outcome.steps = len(run.tail.entries)

    def failed(self, runs: Sequence[Run]) -> Run | None:
        return next((r for r in runs if r.finished() and r.process.returncode != 0), None)

    def watch(
        self,
        runs: Sequence[Run],
        reference: Run | None,
        max_steps: int | None,
        stop_early: bool = True,
        skip: int = 0,
    ) -> tuple[int, Divergence | None, Run | None]:
        """Compares the runs' records as they grow until they end, part or fail.

        ``reference`` is a run (finished, or going on) that every run is compared with;
        otherwise the first of ``runs`` is the reference. With ``stop_early`` off, the
        runs go on after a divergence (to plot how it grows). The first ``skip`` entries
        of the reference are passed over (a resumed run's record starts after them).
        Returns the entries compared, the first divergence and a run that failed.

        Raises:
            RecordError: A record is corrupt, or the runs' records cannot be compared.
            RunTimeout: The runs took longer than the session's timeout.
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
                    found = compare_entries(ours, theirs, same_step=skip == 0)
                    self._count(base, other, ours, theirs, None if found is None else found.keys)
                    if found is not None and first is None:
                        first = replace(
                            self._divergence(base, other, skip + entry, found.keys),
                            rank=found.rank,
                            ranks=found.ranks,
                        )
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
                raise RunTimeout()
            time.sleep(POLL_SECONDS)

    def _count(
        self,
        base: RecordTail,
        other: RecordTail,
        ours: dict[str, Any],
        theirs: dict[str, Any],
        keys: tuple[str, ...] | None,
    ) -> None:
        """Per step: how many recorded values differ, and |a - b| of each logged number."""
        pair = (self._index(base), self._index(other))
        counts = self.series.setdefault(pair, {"differing": [], "log": []})
        counts["differing"].append(len(keys or ()))
        deltas = {}
        for name, a in ours.get(LOG, {}).items():
            b = theirs.get(LOG, {}).get(name)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                deltas[name] = abs(a - b)
        counts["log"].append(deltas)

    def _index(self, tail: RecordTail) -> int:
        return next(run.outcome.index for run in self.runs if run.tail is tail)

    def _divergence(
        self, base: RecordTail, other: RecordTail, entry: int, keys: tuple[str, ...]
    ) -> Divergence:
        source = base.entries[entry] if entry < len(base.entries) else {}
        return Divergence(
            a=self._index(base),
            b=self._index(other),
            entry=entry,
            step=source.get(STEP, entry),
            optimizer=source.get(OPTIMIZER),
            keys=keys,
        )
