"""The live tail of a run's record: the entries written so far, read while the run trains.

``torchrepro check`` compares runs as their records grow. Each :meth:`RecordTail.poll`
reads the complete lines appended since the last poll and passes them through the same
checks as :func:`~torchrepro.records.read_record` (format, schema version, one JSON entry
per line); a line still being written (no newline yet) waits for the next poll. A run of
several ranks is read from its rank files, merged step by step. Nothing here imports
torch.

Example:
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
from torchrepro.records.format import (
    ALGORITHM,
    OPTIMIZER,
    RANKS,
    REPLICAS,
    STEP,
    parse_entry,
    parse_header,
    rank_files,
)

__all__ = ["RecordTail"]


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

    Attributes:
        path: The record file asked for (``TORCHREPRO_RECORD`` of the run).
        header: The header, once written; else None.
        entries: The step entries read so far.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.header: dict[str, Any] | None = None
        self.entries: list[dict[str, Any]] = []
        self._single = _FileTail(self.path)
        self._ranks: dict[int, _FileTail] = {}

    def poll(self) -> None:
        """Reads what was appended since the last poll.

        Raises:
            RecordError: A complete line is not a record header or entry of this schema
                version (a torn write in the middle, a mixed or foreign file).
        """
        try:
            self._single.poll()
        finally:  # the entries before a corrupt line stay readable
            if self._single.header is not None:
                self.header, self.entries = self._single.header, self._single.entries
        if self._single.header is not None:
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

    def replica_drift(self) -> list[tuple[int | None, dict[str, Any]]]:
        """(step, replica verdict) of each replica check that found a rank drifting.

        Example:
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
