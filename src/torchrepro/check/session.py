"""The runs of one ``torchrepro check``: starting them, watching their records, stopping them.

Each run is a process in a session of its own (so that stopping it stops its DataLoader
workers and torchrun's ranks too), with its records read live through
:class:`~torchrepro.records.tail.RunTail`: one record per training process of the
command. The training processes of two runs are paired by command line, then by order of
start (:class:`Pair`), and each pair is compared entry by entry as its records grow.

Examples:
    >>> session = Session([sys.executable, "-c", "pass"], Path("."), dict(os.environ), 60, None)
    >>> run = session.start(1)
    >>> session.watch([run], None, None)  # it never steps: nothing compared, nothing failed
    (0, None, None)
    >>> session.close(); run.outcome.returncode
    0
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from torchrepro import _contract
from torchrepro.check.processes import stderr_tail, stop_processes
from torchrepro.check.report import Divergence, RunOutcome, command_words
from torchrepro.compare import compare_entries
from torchrepro.compare.sizes import entry_gap, params_gap
from torchrepro.errors import CheckError
from torchrepro.records.files import ARGV, process_files, process_path, rank_files
from torchrepro.records.format import LOG, OPTIMIZER, STEP
from torchrepro.records.tail import RecordTail, RunTail

__all__ = ["Pair", "Run", "RunTimeout", "Session"]

POLL_SECONDS = 0.02


class RunTimeout(Exception):
    """A phase of the check took longer than its timeout."""


@dataclass
class Run:
    """A started run: its outcome so far, its process and its records."""

    outcome: RunOutcome
    process: subprocess.Popen[bytes]
    tail: RunTail
    stderr_path: Path

    @property
    def name(self) -> str:
        return self.outcome.name

    def finished(self) -> bool:
        return self.process.poll() is not None


def argv_of(process: RecordTail) -> tuple[str, ...]:
    """The command line of the process that wrote a record (empty if its header has none)."""
    return tuple((process.header or {}).get(ARGV) or ())


def _same_training(a: RecordTail, b: RecordTail) -> bool:
    """Whether two processes' records can be of the same training: command line, world."""
    ha, hb = a.header or {}, b.header or {}
    return argv_of(a) == argv_of(b) and ha.get("world_size") == hb.get("world_size")


@dataclass
class Pair:
    """A training process of the reference run and its counterpart in another run.

    Attributes:
        base, other: The reference run and the run compared with it.
        ours, theirs: The two processes' records.
        series: The name of its per-step counts in the plot (``"1-2"`` for the first pair
            of two runs, then with the command line).
        compared: Entries compared so far.
    """

    base: Run
    other: Run
    ours: RecordTail
    theirs: RecordTail
    series: str
    compared: int = 0

    @property
    def argv(self) -> tuple[str, ...]:
        return argv_of(self.ours)

    @property
    def process(self) -> int:
        """The place of ``ours`` among the reference run's training processes by start
        (1-based), as far as they are known now."""
        return self.base.tail.processes.index(self.ours) + 1


class Session:
    """Starts, watches and stops the runs of one check.

    Attributes:
        pairs: Every pair of training processes compared so far, in the order paired.
        notes: What the comparison could not see (processes left unpaired), in words.
        origins: Each divergence found, with the pair it was found in.
    """

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
        self.pairs: list[Pair] = []
        self.notes: list[str] = []
        self.origins: list[tuple[Divergence, Pair]] = []
        self.series: dict[str, dict[str, list[Any]]] = {}
        self._files: list[IO[bytes]] = []
        self._began = time.monotonic()
        self._shown = ""

    def start(self, index: int, extra: dict[str, str] | None = None, name: str = "run") -> Run:
        """Starts run ``index`` (``name`` tells a resumed leg or a replay apart)."""
        record = self.workdir / f"{name}{index}.jsonl"
        # A reused --workdir may hold the records of an earlier check under these names:
        # the run's training processes would claim the next names and be read with them.
        for order, ranked in process_files(record):
            path = process_path(record, order)
            for stale in rank_files(path).values() if ranked else [path]:
                stale.unlink(missing_ok=True)
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
        run = Run(RunOutcome(index, str(record), name), process, RunTail(record), stderr_path)
        self.runs.append(run)
        return run

    def stop(self, runs: Sequence[Run]) -> None:
        """Stops the runs still going; they count as stopped by check, not as failed."""
        for run in runs:
            if run.process.poll() is None:
                run.outcome.stopped = True
        # Runs that exited are stopped too: what they started may still be running.
        stop_processes([run.process for run in runs])

    def close(self) -> None:
        """Stops every run, closes their logs and fills in their outcomes."""
        self.stop(self.runs)
        for file in self._files:
            file.close()
        for run in self.runs:
            run.outcome.returncode = None if run.outcome.stopped else run.process.returncode
            run.outcome.stderr_tail = stderr_tail(run.stderr_path)
            run.tail.poll()
            run.outcome.steps = run.tail.steps
            run.outcome.processes = len(run.tail.processes)

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
        otherwise the first of ``runs`` is the reference. Each training process of a run
        is compared with the process of the reference run that has its command line (the
        first of those not yet paired, by start). With ``stop_early`` off, the runs go on
        after a divergence (to plot how it grows). The first ``skip`` entries of each
        reference process are passed over (a resumed run's record starts after them).
        ``max_steps`` caps each pair at that many steps (counting the skipped ones); the
        runs end once every training process seen is paired and reached it.

        Returns:
            The steps compared (per training process of the reference, the most of any
            pair, summed over processes), the first divergence and a run that failed.

        Raises:
            RecordError: A record is corrupt, or the runs' records cannot be compared.
            RunTimeout: The runs took longer than the session's timeout.
        """
        started = time.monotonic()
        base = reference if reference is not None else runs[0]
        others = [run for run in runs if run is not base]
        watched = [*runs, *([reference] if reference is not None else [])]
        limit = None if max_steps is None else max_steps - skip
        pairs: list[Pair] = []
        first: Divergence | None = None
        while True:
            for run in watched:
                run.tail.poll()
            done = all(run.finished() for run in watched)
            if done:  # read what was written between the poll and the exit
                for run in watched:
                    run.tail.poll()
            for other in others:
                pairs += self._pair(base, other, pairs)
            for process in base.tail.processes:
                group = [pair for pair in pairs if pair.ours is process]
                found = self._advance(group, limit, skip, stop_early)
                first = first or found
                if first is not None and stop_early:
                    return _compared(pairs), first, None
            self._show(base, others, pairs, skip)
            crashed = self.failed(runs)
            if crashed is not None:
                return _compared(pairs), first, crashed
            waiting = self._unpaired(base, others, pairs)
            if limit is not None and not waiting and self._reached(base, others, pairs, limit):
                return _compared(pairs), first, None
            if done:
                first = first or self._ending(pairs, skip, limit)
                for run, place, missing_in in waiting:
                    missing = self._missing(base, run, place, missing_in)
                    if first is None:
                        first = missing
                    else:  # the report names the first finding; the others in a note each
                        self.notes.append(
                            f"run {missing_in} did not run training process {place} of run "
                            f"{missing.present_in}: {command_words(missing.argv)}"
                        )
                return _compared(pairs), first, None
            if self.timeout is not None and time.monotonic() - started > self.timeout:
                raise RunTimeout()
            time.sleep(POLL_SECONDS)

    def _pair(self, base: Run, other: Run, pairs: Sequence[Pair]) -> list[Pair]:
        """New pairs of ``other``'s training processes with the reference's, by command line."""
        taken = {id(pair.ours) for pair in pairs if pair.other is other}
        taken_theirs = {id(pair.theirs) for pair in pairs if pair.other is other}
        free = [process for process in base.tail.processes if id(process) not in taken]
        new = []
        for theirs in other.tail.processes:
            if id(theirs) in taken_theirs:
                continue
            match = next((process for process in free if _same_training(process, theirs)), None)
            if match is not None:
                free.remove(match)
                series = f"{base.outcome.index}-{other.outcome.index}"
                if any(pair.series == series for pair in self.pairs):
                    series += f" {command_words(argv_of(match), 40)}"
                pair = Pair(base, other, match, theirs, series)
                new.append(pair)
                self.pairs.append(pair)
        return new

    def _unpaired(
        self, base: Run, others: Sequence[Run], pairs: Sequence[Pair]
    ) -> list[tuple[Run, int, int]]:
        """(run, place of the process by start, the run without it) of every unpaired one."""
        found = []
        for other in others:
            mine = [pair for pair in pairs if pair.other is other]
            for run, missing_in, paired in (
                (base, other, {id(pair.ours) for pair in mine}),
                (other, base, {id(pair.theirs) for pair in mine}),
            ):
                for place, process in enumerate(run.tail.processes, start=1):
                    if id(process) not in paired:
                        found.append((run, place, missing_in.outcome.index))
        return found

    def _reached(self, base: Run, others: Sequence[Run], pairs: Sequence[Pair], limit: int) -> bool:
        if others:
            return bool(pairs) and all(pair.compared >= limit for pair in pairs)
        processes = base.tail.processes  # a run on its own (the first of a sequential check)
        return bool(processes) and all(len(p.entries) >= limit for p in processes)

    def _advance(
        self, group: Sequence[Pair], limit: int | None, skip: int, stop_early: bool
    ) -> Divergence | None:
        """Compares one reference process with its counterparts, entry by entry."""
        if not group:
            return None
        ours = group[0].ours
        available = min(len(ours.entries) - skip, *(len(pair.theirs.entries) for pair in group))
        if limit is not None:
            available = min(available, limit)
        first: Divergence | None = None
        for entry in range(min(pair.compared for pair in group), available):
            for pair in group:
                if pair.compared > entry:
                    continue  # paired earlier than the others of its group
                a, b = ours.entries[skip + entry], pair.theirs.entries[entry]
                found = compare_entries(a, b, same_step=skip == 0)
                self._count(pair, a, b, None if found is None else found.keys)
                pair.compared = entry + 1
                if found is not None and first is None:
                    first = replace(
                        self._divergence(pair, skip + entry, found.keys),
                        rank=found.rank,
                        ranks=found.ranks,
                    )
                    self.origins.append((first, pair))
            if first is not None and stop_early:
                break
        return first

    def _ending(self, pairs: Sequence[Pair], skip: int, limit: int | None) -> Divergence | None:
        """At the end: the first pair whose processes recorded different numbers of steps."""
        for pair in pairs:
            lengths = [len(pair.ours.entries) - skip, len(pair.theirs.entries)]
            if limit is not None:
                lengths = [min(length, limit) for length in lengths]
            if lengths[0] != lengths[1]:
                found = self._divergence(pair, skip + pair.compared, ())
                self.origins.append((found, pair))
                return found
        return None

    def _missing(self, base: Run, run: Run, process: int, missing_in: int) -> Divergence:
        other = run if run is not base else None
        return Divergence(
            a=base.outcome.index,
            b=missing_in if other is None else other.outcome.index,
            entry=0,
            step=None,
            optimizer=None,
            keys=(),
            process=process,
            argv=argv_of(run.tail.processes[process - 1]),
            missing_in=missing_in,
        )

    def _show(self, base: Run, others: Sequence[Run], pairs: Sequence[Pair], skip: int) -> None:
        """Hands the progress callback one line, when it changed."""
        if self.progress is None:
            return
        if others:
            counts = [(pair.argv, pair.compared) for pair in pairs if pair.other is others[0]]
            what = f"steps compared: {skip + _compared(pairs)}"
        else:
            counts = [(argv_of(p), len(p.entries)) for p in base.tail.processes]
            what = f"run {base.outcome.index}: {sum(n for _, n in counts)} steps recorded"
        if len(counts) > 1:
            what += " (" + ", ".join(f"{command_words(a, 30)}: {n}" for a, n in counts) + ")"
        text = f"{what}, {time.monotonic() - self._began:.0f} s"
        if text != self._shown:
            self._shown = text
            self.progress(text)

    def _count(
        self,
        pair: Pair,
        ours: dict[str, Any],
        theirs: dict[str, Any],
        keys: tuple[str, ...] | None,
    ) -> None:
        """Per step: how many recorded values differ, and |a - b| of each logged number."""
        counts = self.series.setdefault(pair.series, {"differing": [], "log": [], "gap": []})
        counts["differing"].append(len(keys or ()))
        counts["gap"].append(params_gap(ours, theirs) if keys else 0.0)
        deltas = {}
        for key, a in ours.get(LOG, {}).items():
            b = theirs.get(LOG, {}).get(key)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                deltas[key] = abs(a - b)
        counts["log"].append(deltas)

    def _divergence(self, pair: Pair, entry: int, keys: tuple[str, ...]) -> Divergence:
        entries = pair.ours.entries
        source = entries[entry] if entry < len(entries) else {}
        other = pair.theirs.entries
        found = compare_entries(source, other[entry]) if source and entry < len(other) else None
        rank = None if found is None else found.rank
        gap = entry_gap(source, other[entry], keys, rank) if found is not None else None
        return Divergence(
            a=pair.base.outcome.index,
            b=pair.other.outcome.index,
            entry=entry,
            step=source.get(STEP, entry),
            optimizer=source.get(OPTIMIZER),
            keys=keys,
            gap=gap,
            process=pair.process,
            argv=pair.argv,
        )


def _compared(pairs: Sequence[Pair]) -> int:
    """Steps compared: per reference process the most of any of its pairs, summed."""
    most: dict[int, int] = {}
    for pair in pairs:
        most[id(pair.ours)] = max(most.get(id(pair.ours), 0), pair.compared)
    return sum(most.values())
