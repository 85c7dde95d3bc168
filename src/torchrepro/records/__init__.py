"""Run records: the format and reading it back, the live tail, and the writer.

:mod:`~torchrepro.records.format` (the file layout, schema version, rank-file names,
:func:`read_record`) and :mod:`~torchrepro.records.tail` (:class:`RecordTail`) import no
torch, so the launching process of ``torchrepro check`` reads records without it; the
writer (:func:`record`, :func:`log`, :func:`step`, :class:`Recorder`) is imported when
first used.

A record has one entry per training step: each optimizer step; in a training with no
optimizer, each backward pass followed by a hand-written update; or each call of
:func:`step` (:mod:`~torchrepro.records.writer` says exactly which, and how a training
with both an optimizer and backward passes gets no entry twice).

Sharded parameters (FSDP2's ``fully_shard``, tensor parallelism) are DTensors: each
rank records the digest of its own local shard (``to_local()``), under the parameter's
name, in its own rank file. Run 1's rank ``r`` is compared with run 2's rank ``r``, so a
difference in any shard is found, on the rank that holds it, with no collective call in
the recorder (gathering the full tensors would all-gather every parameter at every step).
A record of a sharded training therefore compares only with one sharded the same way (same
world size and placements); the shard shapes are part of the digests.

Examples:
    >>> model = torch.nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> with torchrepro.records.record("run.jsonl"):
    ...     for _ in range(2):
    ...         opt.zero_grad(); model(torch.ones(1, 2)).sum().backward(); opt.step()
    >>> len(torchrepro.records.read_record("run.jsonl").entries)
    2
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from torchrepro.records.files import rank_path
from torchrepro.records.format import FORMAT, SCHEMA_VERSION, Record, read_record
from torchrepro.records.tail import RecordTail

if TYPE_CHECKING:
    from torchrepro.records.recording import log, record, start_from_env, step
    from torchrepro.records.writer import Recorder

__all__ = [
    "FORMAT",
    "SCHEMA_VERSION",
    "Record",
    "RecordTail",
    "Recorder",
    "log",
    "rank_path",
    "read_record",
    "record",
    "start_from_env",
    "step",
]

# The writer needs torch; importing it only when asked keeps the reader torch-free.
_WRITER = {
    "Recorder": "writer",
    "log": "recording",
    "record": "recording",
    "start_from_env": "recording",
    "step": "recording",
}


def __getattr__(name: str) -> Any:
    owner = _WRITER.get(name)
    if owner is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{owner}"), name)
