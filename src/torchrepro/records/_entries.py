"""A record entry as the recorder builds it and writes it: the plan of the parameters it
digests, the entry waiting for its digests, and its JSON line.

Examples:
    >>> plan = Plan(0, ["fc.weight"])
    >>> digests = _PendingDigests.of("xxh3_128", ["0" * 32])
    >>> pending = PendingEntry(3, 0, digests, plan.keys, 1, {}, [], {})
    >>> entry_line(pending, grads=False, batch=False, algorithm=None)
    '{"step":3,"optimizer":0,"algorithm":"xxh3_128","params":{"fc.weight":"00000000000000000000000000000000"}}\\n'
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from torchrepro.digests import _PendingDigests
from torchrepro.records._batches import Batch
from torchrepro.records._capture import LogValue, log_value
from torchrepro.records._stats import PendingStats
from torchrepro.records.format import (
    ALGORITHM,
    BATCH,
    GRADS,
    LOG,
    OPTIMIZER,
    PARAMS,
    STATS,
    STEP,
)

__all__ = ["Backward", "PendingEntry", "Plan", "entry_line"]

# One encoder for every line, not one per json.dumps call.
_encode = json.JSONEncoder(separators=(",", ":")).encode


@dataclass
class Plan:
    """A set of parameters as entries write them: names, and their JSON keys escaped once."""

    index: int | None  # the optimizer's index; None: the parameters of the modules that ran
    names: list[str] = field(default_factory=list)
    tensors: list[torch.Tensor] = field(default_factory=list)  # only when index is None
    keys: list[str] = field(init=False)  # '"fc.weight":"', to be followed by a digest
    steps: int = 0

    def __post_init__(self) -> None:
        self.rename(self.names)

    def rename(self, names: list[str]) -> None:
        self.names = names
        self.keys = [json.dumps(name) + ':"' for name in names]


@dataclass
class PendingEntry:
    step: int
    optimizer: int | None
    digests: _PendingDigests  # the parameters, then the gradients
    keys: list[str]  # the JSON key of each digest
    params: int  # how many of the digests are parameters
    logs: dict[str, LogValue]
    batch: list[Batch]
    taken: dict[str, Any]  # rng and replicas, when taken
    stats: PendingStats | None = None  # sizes of the digested tensors, in their order


@dataclass
class Backward:
    """A backward pass that may have been a step, until the parameters say whether."""

    plan: Plan
    before: list[str]  # the parameters' digests as the backward pass ended
    grads: list[tuple[str, str]]  # (key, digest) of each gradient
    algorithm: str
    rng: dict[str, str] | None
    logs: dict[str, LogValue]
    batch: list[Batch]


def _pairs(keys: Sequence[str], digests: Sequence[str]) -> str:
    return ",".join([key + digest + '"' for key, digest in zip(keys, digests)])


def entry_line(pending: PendingEntry, grads: bool, batch: bool, algorithm: str | None) -> str:
    """The JSON line of a finished entry (its digests are on the host), newline included."""
    digests, keys, n = pending.digests.hexdigests(), pending.keys, pending.params
    # Written directly, not through json per step: step and optimizer are ints, the
    # algorithm is one of digests.ALGORITHMS, the names were escaped once per plan.
    optimizer = "null" if pending.optimizer is None else pending.optimizer
    parts = [
        f'{{"{STEP}":{pending.step},"{OPTIMIZER}":{optimizer},'
        f'"{ALGORITHM}":"{pending.digests.algorithm}"'
    ]
    for key, value in pending.taken.items():
        parts += [f',"{key}":', _encode(value)]
    parts += [f',"{PARAMS}":{{', _pairs(keys[:n], digests[:n]), "}"]
    if grads:
        parts += [f',"{GRADS}":{{', _pairs(keys[n:], digests[n:]), "}"]
    if pending.stats is not None:
        sizes = pending.stats.values()
        measured = {PARAMS: sizes[:n], **({GRADS: sizes[n:]} if grads else {})}
        parts += [f',"{STATS}":', _encode(measured)]
    if batch:
        parts += [f',"{BATCH}":', _encode([b.value() for b in pending.batch])]
    if pending.logs:
        logged = {k: log_value(v, algorithm) for k, v in pending.logs.items()}
        parts += [f',"{LOG}":', _encode(logged)]
    parts.append("}\n")
    return "".join(parts)
