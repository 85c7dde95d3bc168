"""What a check's runs show beyond the verdict: the training processes compared, the
manifests to set side by side, replica drift, and the replay that names the first
differing op (rank by rank under torchrun).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from torchrepro import _contract
from torchrepro import localize as loc
from torchrepro.check.processes import stderr_tail, stop_processes
from torchrepro.check.report import Divergence, TrainingProcess, command_words
from torchrepro.check.session import POLL_SECONDS, Run, Session, argv_of
from torchrepro.compare import compare_entries
from torchrepro.errors import RecordError
from torchrepro.records.files import process_files, process_path, rank_files

__all__ = [
    "Replay",
    "environments",
    "replay",
    "replay_files",
    "replica_notes",
    "sharing",
    "training_processes",
]


def training_processes(session: Session) -> list[TrainingProcess]:
    """Each training process of the reference run that was compared, with its steps.

    The legs of a resumed run add up; of several runs compared with one reference, the
    pair that got furthest counts.
    """
    steps: dict[int, dict[int, int]] = {}
    named: dict[int, TrainingProcess] = {}
    for pair in session.pairs:
        per_run = steps.setdefault(id(pair.ours), {})
        index = pair.other.outcome.index
        per_run[index] = per_run.get(index, 0) + pair.compared
        named.setdefault(id(pair.ours), TrainingProcess(pair.process, command_words(pair.argv), 0))
    found = [replace(p, steps=max(steps[key].values())) for key, p in named.items()]
    return sorted(found, key=lambda p: p.order)


def environments(
    session: Session, divergence: Divergence | None
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The manifests to compare: of the diverging pair, else of the first pair compared."""
    pairs = [pair for found, pair in session.origins if found is divergence] or session.pairs
    if pairs:
        a, b = pairs[0].ours.header or {}, pairs[0].theirs.header or {}
        return a.get("env", {}), b.get("env", {})
    headers = [run.tail.header for run in session.runs if run.tail.header and run.name != "replay"]
    return (headers[0]["env"], headers[1]["env"]) if len(headers) >= 2 else None


def sharing(session: Session, divergence: Divergence) -> int:
    """How many training processes of a diverging run have the diverging one's command line."""
    counts = [
        sum(argv_of(process) == divergence.argv for process in run.tail.processes)
        for run in session.runs
        if run.outcome.index in (divergence.a, divergence.b) and run.name == "run"
    ]
    return max(counts, default=0)


_COLLECTIVES = ("c10d.", "_c10d_functional.", "c10d_functional.")


def _collectives_before(events: list[dict[str, Any]], where: loc.Localization) -> int:
    """How many collectives a rank ran before its first difference.

    Collectives run in the same order on every rank: a difference that came to a rank
    through its k-th collective was on another rank before that rank's k-th one.
    """
    before = events[: where.index or 0]
    return sum(event["op"].startswith(_COLLECTIVES) for event in before)


def _trace_files(path: Path) -> dict[int | None, Path]:
    """The traces a replay wrote at ``path``: itself, or one per rank under torchrun."""
    ranked: dict[int | None, Path] = {rank: file for rank, file in rank_files(path).items()}
    return ranked or ({None: path} if path.exists() else {})


def _world_size(session: Session, divergence: Divergence) -> int:
    pairs = [pair for found, pair in session.origins if found is divergence]
    header = (pairs[0].ours.header or {}) if pairs else {}
    return int(header.get("world_size") or 1)


class Replay(NamedTuple):
    """What the replays found: where the traces part (None: not localized, ``notes`` say
    why), and the trace files it was read from."""

    localization: loc.Localization | None
    notes: list[str]
    traces: list[Path]


def replay(session: Session, divergence: Divergence) -> Replay:
    """Replays the two diverging runs up to the divergent entry with the op tracer on.

    Only the diverging training process of the command traces (by its command line);
    under torchrun each of its ranks writes a trace, and the rank named is the one whose
    computation differs after the fewest collectives (after the all-reduce of gradients,
    every rank has one rank's difference), the lowest of those. Traces of a reused workdir
    are removed first.

    A replay that wrote no trace is named in a note, with the end of its standard error;
    so are replays whose own records part before the divergent entry (their traces would
    start from parameters that differ already).
    """
    world = _world_size(session, divergence)
    paths = [session.workdir / f"trace{index}.jsonl" for index in (divergence.a, divergence.b)]
    for path in paths:
        for stale in [path, *rank_files(path).values()]:
            stale.unlink(missing_ok=True)
    target = {_contract.TRACE_ARGV: json.dumps(list(divergence.argv))} if divergence.argv else {}
    # The replays' records only count steps for the tracer: no grads, batch or RNG
    # digests, and no replica check (its all-gathers would run in the traced step).
    step = {
        _contract.TRACE_STEP: str(divergence.entry),
        _contract.RECORD_WITH: "",
        _contract.REPLICA_EVERY: "0",
        **target,
    }
    runs = [
        session.start(index, {_contract.TRACE: str(path), **step}, name="replay")
        for index, path in zip((divergence.a, divergence.b), paths)
    ]
    started = time.monotonic()
    timed_out = False
    while not all(len(_trace_files(p)) >= world or r.finished() for p, r in zip(paths, runs)):
        if session.timeout is not None and time.monotonic() - started > session.timeout:
            timed_out = True
            break
        time.sleep(POLL_SECONDS)
    stop_processes([run.process for run in runs])
    traces = [_trace_files(path) for path in paths]
    missing = [(run, found) for run, found in zip(runs, traces) if len(found) < world]
    if missing:
        notes = [_failed(run, divergence.entry, timed_out, session.timeout) for run, _ in missing]
        return Replay(None, notes, [])
    parted = _parted(runs, divergence)
    if parted is not None:
        return Replay(
            None,
            [
                f"first differing module: not localized (the replays parted at step {parted}, "
                f"before step {divergence.entry} where the checked runs did: what makes the "
                "runs differ does not repeat from run to run, e.g. a read of uninitialized "
                "memory, timing or threads)"
            ],
            [],
        )
    found: list[tuple[bool, int, int | None, loc.Localization]] = []
    for rank in sorted(set(traces[0]) & set(traces[1]), key=lambda r: -1 if r is None else r):
        try:
            ours, theirs = loc.read_trace(traces[0][rank]), loc.read_trace(traces[1][rank])
        except RecordError as error:
            return Replay(None, [f"first differing module: not localized ({error})"], [])
        where = loc.first_difference(ours, theirs)
        found.append((where.kind == "none", _collectives_before(ours, where), rank, where))
    if not found:
        return Replay(None, [], [])
    _, _, rank, where = min(found, key=lambda item: (item[0], item[1], item[2] or 0))
    for files in traces:  # keep the traces the report names
        for other, path in files.items():
            if other != rank:
                path.unlink(missing_ok=True)
    return Replay(replace(where, rank=rank), [], [files[rank] for files in traces])


def _parted(runs: list[Run], divergence: Divergence) -> int | None:
    """The entry before ``divergence.entry`` where the replays' own records part, if any."""
    processes = []
    for run in runs:
        run.tail.poll()
        found = [p for p in run.tail.processes if argv_of(p) == divergence.argv]
        if not found:
            return None
        processes.append(found[0])
    ours, theirs = (process.entries[: divergence.entry] for process in processes)
    for entry, (a, b) in enumerate(zip(ours, theirs)):
        if compare_entries(a, b) is not None:
            return entry
    return None


def _failed(run: Run, entry: int, timed_out: bool, timeout: float | None) -> str:
    """Why a replay wrote no trace, with the end of its standard error."""
    if timed_out and not run.finished():
        why = f"the replay of run {run.outcome.index} did not reach step {entry} in {timeout} s"
    else:
        why = (
            f"the replay of run {run.outcome.index} exited with status "
            f"{run.process.returncode} before the end of step {entry}"
        )
    tail = stderr_tail(run.stderr_path)
    if tail:
        why += "; its stderr ends with:\n" + "\n".join(f"    {line}" for line in tail.splitlines())
    return f"first differing module: not localized ({why})"


def replay_files(session: Session) -> list[Path]:
    """The files of the replays that are no use once their traces are read: their records
    and logs (the traces stay)."""
    found: list[Path] = []
    for run in session.runs:
        if run.name == "replay":
            record = Path(run.outcome.record)
            for order, ranked in process_files(record):
                path = process_path(record, order)
                found += rank_files(path).values() if ranked else [path]
            found += [run.stderr_path, run.stderr_path.with_suffix(".stdout")]
    return found


def replica_notes(session: Session) -> list[str]:
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
