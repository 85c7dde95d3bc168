"""What a check's runs show beyond the verdict: the training processes compared, the
manifests to set side by side, replica drift, and the replay that names the first
differing op.

"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

from torchrepro import _contract
from torchrepro import localize as loc
from torchrepro.check.processes import stop_processes
from torchrepro.check.report import Divergence, TrainingProcess, command_words
from torchrepro.check.session import POLL_SECONDS, Session, argv_of
from torchrepro.errors import RecordError

__all__ = ["environments", "replay", "replica_notes", "sharing", "training_processes"]


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


def replay(session: Session, divergence: Divergence) -> loc.Localization | None:
    """Replays the two diverging runs up to the divergent entry with the op tracer on.

    Only the diverging training process of the command traces (by its command line).
    """
    traces = []
    runs = []
    target = {_contract.TRACE_ARGV: json.dumps(list(divergence.argv))} if divergence.argv else {}
    for index in (divergence.a, divergence.b):
        path = session.workdir / f"trace{index}.jsonl"
        traces.append(path)
        runs.append(
            session.start(
                index,
                {
                    _contract.TRACE: str(path),
                    _contract.TRACE_STEP: str(divergence.entry),
                    **target,
                },
                name="replay",
            )
        )
    started = time.monotonic()
    while not all(path.exists() or run.finished() for path, run in zip(traces, runs)):
        if session.timeout is not None and time.monotonic() - started > session.timeout:
            break
        time.sleep(POLL_SECONDS)
    stop_processes([run.process for run in runs])
    try:
        return loc.first_difference(loc.read_trace(traces[0]), loc.read_trace(traces[1]))
    except RecordError:
        return None


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
