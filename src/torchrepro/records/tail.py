"""The live tail of a run's record: the entries written so far, read while the run trains.

``torchrepro check`` compares runs as their records grow. Each :meth:`RecordTail.poll`
reads the complete lines appended since the last poll and passes them through the same
checks as :func:`~torchrepro.records.read_record` (format, schema version, one JSON entry
per line); a line still being written (no newline yet) waits for the next poll. A run of
several ranks is read from its rank files, merged step by step. :class:`RunTail` reads
every training process of one run (each has its record beside the run's path, see
:func:`~torchrepro.records.files.claim_record`), in the order they started. Nothing here
imports torch.

Examples:
    >>> model = torch.nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> tail = RecordTail("run.jsonl")
    >>> with torchrepro.record("run.jsonl"):
    ...     for _ in range(2):
    ...         opt.zero_grad(); model(torch.ones(1, 2)).sum().backward(); opt.step()
    ...         tail.poll(); print(len(tail.entries), "entries so far")
    1 entries so far
    2 entries so far
    >>> with open("run.jsonl", "a") as file:  # a torn write in the middle of the file
    ...     _ = file.write('{"step": 2, "par\\n{"step": 3}\\n')
    >>> tail.poll()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    torchrepro.errors.RecordError: 'run.jsonl' line 4 is corrupt (...); expected one JSON ...
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torchrepro.errors import RecordError
from torchrepro.records.files import (
    STARTED,
    process_files,
    process_path,
    rank_files,
    read_incomplete,
)
from torchrepro.records.format import (
    ALGORITHM,
    OPTIMIZER,
    RANKS,
    REPLICAS,
    STEP,
    parse_entry,
    parse_header,
)

__all__ = ["RecordTail", "RunTail"]


class _FileTail:
    """The complete lines of one record file, read as they are appended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.header: dict[str, Any] | None = None
        self.entries: list[dict[str, Any]] = []
        self._offset = 0
        self._partial = b""
        self._lines = 0
        self._error: RecordError | None = None

    def poll(self) -> None:
        if self._error is not None:
            raise self._error  # a corrupt line stays corrupt: never skip past it
        try:
            with open(self.path, "rb") as file:
                file.seek(self._offset)
                chunk = file.read()
        except FileNotFoundError:
            return
        self._offset += len(chunk)
        # Bytes, split at b"\n": a newline byte never occurs inside a UTF-8 character.
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        try:
            for raw in lines:
                self._take(raw)
        except RecordError as error:
            self._error = error
            raise

    def _take(self, raw: bytes) -> None:
        self._lines += 1
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RecordError(
                f"{str(self.path)!r} line {self._lines} is not UTF-8 text ({e.reason}); "
                "expected one JSON entry per line. The file was modified or mixed."
            ) from None
        if self.header is None:
            self.header = parse_header(line, self.path)
        else:
            self.entries.append(parse_entry(line, self.path, self._lines))


class RecordTail:
    """The record of one run as it grows: its own file, or one file per rank under torchrun.

    With several ranks (``run1.rank0.jsonl``, ``run1.rank1.jsonl``, ...) entry ``i``
    exists once every rank has written its ``i``-th step; it holds each rank's entry under
    ``"ranks"``, so runs are compared rank by rank. The header is rank 0's.

    Args:
        path: The record file asked for (one training process's, see
            :func:`~torchrepro.records.files.process_path`).
        ranks: True: read only the rank files; False: only ``path`` itself; None: ``path``,
            else the rank files.

    Attributes:
        path: The record file asked for.
        header: The header, once written; else None.
        entries: The step entries read so far.
    """

    def __init__(self, path: str | os.PathLike[str], ranks: bool | None = None) -> None:
        self.path = Path(path)
        self.header: dict[str, Any] | None = None
        self.entries: list[dict[str, Any]] = []
        self._single = _FileTail(self.path) if ranks is not True else None
        self._ranks: dict[int, _FileTail] = {}
        self._ranked = ranks is not False

    def poll(self) -> None:
        """Reads what was appended since the last poll.

        Raises:
            RecordError: A complete line is not a record header or entry of this schema
                version (a torn write in the middle, a mixed or foreign file).
        """
        if self._single is not None:
            try:
                self._single.poll()
            finally:  # the entries before a corrupt line stay readable
                if self._single.header is not None:
                    self.header, self.entries = self._single.header, self._single.entries
            if self._single.header is not None or not self._ranked:
                return
        for rank, path in rank_files(self.path).items():
            self._ranks.setdefault(rank, _FileTail(path))
        for tail in self._ranks.values():
            tail.poll()
        headers = {r: t.header for r, t in self._ranks.items() if t.header is not None}
        if not headers:
            return
        self.header = headers.get(0, next(iter(headers.values())))
        world = int(self.header.get("world_size", len(self._ranks)))
        tails = [self._ranks.get(r) for r in range(world)]
        if not tails:
            return
        available = min(len(t.entries) if t is not None else 0 for t in tails)
        for index in range(len(self.entries), available):
            per_rank = [t.entries[index] for t in tails if t is not None]
            first = per_rank[0]
            self.entries.append(
                {
                    STEP: first.get(STEP),
                    OPTIMIZER: first.get(OPTIMIZER),
                    ALGORITHM: first.get(ALGORITHM),
                    RANKS: per_rank,
                }
            )

    @property
    def incomplete(self) -> str | None:
        """Why a recorder of this process (one of its ranks) stopped early, else None."""
        paths = [self.path, *rank_files(self.path).values()]
        return next(filter(None, map(read_incomplete, paths)), None)

    def replica_drift(self) -> list[tuple[int | None, dict[str, Any]]]:
        """(step, replica verdict) of each replica check that found a rank drifting.

        Examples:
            >>> RecordTail("run.jsonl").replica_drift()
            []
        """
        found = []
        for entry in self.entries:
            for rank_entry in entry.get(RANKS, [entry]):
                replicas = rank_entry.get(REPLICAS)
                if replicas and replicas.get("drifting"):
                    found.append((entry.get(STEP), replicas))
                    break
        return found


class RunTail:
    """The records of one run as they grow: one per training process of its command.

    A command may start several trainings, one after another (``python a.py && python
    b.py``) or at once; each Python process that trains records beside the run's path
    (``run1.jsonl``, ``run1.p1.jsonl``, ...; torchrun's ranks of one training are one
    process here, merged by :class:`RecordTail`).

    Examples:
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> os.environ["TORCHREPRO_RECORD"] = "run.jsonl"  # the run's path, as check sets it
        >>> for steps in (2, 3):  # two trainings of one run
        ...     with torchrepro.record("run.jsonl"):
        ...         for _ in range(steps):
        ...             opt.zero_grad(); model(torch.ones(1, 2)).sum().backward(); opt.step()
        >>> run = RunTail("run.jsonl"); run.poll()
        >>> [len(process.entries) for process in run.processes], run.steps
        ([2, 3], 5)
        >>> [process.path.name for process in run.processes]
        ['run.jsonl', 'run.p1.jsonl']

    Attributes:
        path: The run's record path (``TORCHREPRO_RECORD`` of the run).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._tails: dict[tuple[int, bool], RecordTail] = {}

    def poll(self) -> None:
        """Finds the processes that started recording and reads what each appended.

        Raises:
            RecordError: A complete line of a record is not a header or entry of this
                schema version.
        """
        for order, ranked in process_files(self.path):
            key = (order, ranked)
            if key not in self._tails:
                self._tails[key] = RecordTail(process_path(self.path, order), ranks=ranked)
        for tail in self._tails.values():
            tail.poll()

    @property
    def processes(self) -> list[RecordTail]:
        """The record of each training process, once its header is read, by start time."""
        found = [(key, tail) for key, tail in self._tails.items() if tail.header is not None]
        found.sort(key=lambda item: (_started(item[1]), item[0]))
        return [tail for _, tail in found]

    @property
    def header(self) -> dict[str, Any] | None:
        """The header of the first training process to start; None before any recorded."""
        processes = self.processes
        return processes[0].header if processes else None

    @property
    def steps(self) -> int:
        """The entries recorded so far, all processes together."""
        return sum(len(tail.entries) for tail in self._tails.values())

    @property
    def incomplete(self) -> str | None:
        """Why a recorder of one of the run's processes stopped early, else None."""
        return next(filter(None, (tail.incomplete for tail in self._tails.values())), None)

    def replica_drift(self) -> list[tuple[int | None, dict[str, Any]]]:
        """(step, replica verdict) of each replica check that found a rank drifting."""
        return [found for tail in self.processes for found in tail.replica_drift()]


def _started(tail: RecordTail) -> float:
    started = (tail.header or {}).get(STARTED)
    return float(started) if isinstance(started, (int, float)) else 0.0
