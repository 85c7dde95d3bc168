"""One comparison of two record entries, used by ``torchrepro diff`` and ``check`` alike.

Two entries differ when what the training computed differs: the batch, logged values,
gradients, parameters, or the steps themselves. RNG states are no part of it: a state
that differs changes nothing computed until the training draws from it, and then what it
drew shows in those values. :mod:`~torchrepro.compare.rng` compares them, as evidence.

Examples:
    >>> a = {"step": 3, "optimizer": 0, "batch": [{"batch[0] 4x2 float32": "b0"}],
    ...      "params": {"w": "aa"}}
    >>> found = compare_entries(a, {**a, "batch": [{"batch[0] 4x2 float32": "b1"}],
    ...                             "params": {"w": "ab"}})
    >>> found.keys, found.section
    (('batch[0][0] 4x2 float32', 'params.w'), 'batch')
    >>> describe_difference(found.keys)
    'the input batch (batch[0] 4x2 float32)'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torchrepro.errors import RecordError
from torchrepro.records.format import (
    ALGORITHM,
    BATCH,
    GRADS,
    LOG,
    OPTIMIZER,
    PARAMS,
    RANKS,
    RNG,
    STEP,
    STEPS,
    causal_rank,
    entry_values,
    section_of,
)

__all__ = ["EntryDifference", "compare_entries", "describe_difference"]

# What each section of a record holds, in words.
_SECTION_WORDS = {
    BATCH: "the input batch",
    RNG: "RNG state",
    LOG: "logged value",
    GRADS: "gradients",
    PARAMS: "parameters",
    STEPS: "the step or optimizer order",
}


@dataclass(frozen=True)
class EntryDifference:
    """What differs between two entries of the same position in two records.

    Attributes:
        keys: The computed values that differ (``"params.fc.weight"``,
            ``"batch[0][1] 32 int64"``), in causal order; ``("steps",)`` when the entries
            are of different steps or optimizers. Never RNG states.
        rank: Under torchrun, the rank whose difference comes first in causal order (its
            batch or logged loss before anyone's all-reduced gradients), the lowest on a
            tie: where the difference most likely started. None for one process.
        ranks: Under torchrun, every rank that differs.
    """

    keys: tuple[str, ...]
    rank: int | None = None
    ranks: tuple[int, ...] = ()

    @property
    def section(self) -> str:
        """Where the first difference is: batch, log, grads, params or steps."""
        return section_of(self.keys[0]) if self.keys else STEPS


def _differing(a: dict[str, Any], b: dict[str, Any], same_step: bool) -> tuple[str, ...]:
    alg_a, alg_b = a.get(ALGORITHM), b.get(ALGORITHM)
    if alg_a != alg_b:
        raise RecordError(
            f"step {a.get(STEP)} was digested with {alg_a} in A and {alg_b} in B; digests of "
            "different algorithms never match, so a difference would mean nothing. Record "
            "both runs with the same algorithm (e.g. record(..., algorithm='lanes') on CPU "
            "to compare with a GPU run)."
        )
    if a.get(OPTIMIZER) != b.get(OPTIMIZER) or (same_step and a.get(STEP) != b.get(STEP)):
        return (STEPS,)
    va, vb = entry_values(a), entry_values(b)
    keys = [*va, *(k for k in vb if k not in va)]
    return tuple(k for k in keys if va.get(k) != vb.get(k) and section_of(k) != RNG)


def compare_entries(
    a: dict[str, Any], b: dict[str, Any], *, same_step: bool = True
) -> EntryDifference | None:
    """What the training computed differently in entry ``a`` of run A and entry ``b`` of
    run B; None if every computed value matches (RNG states are not compared).

    Entries merged from several ranks (a ``"ranks"`` list, as the live tail of a torchrun
    run gives them) are compared rank by rank.

    Args:
        a, b: Step entries (see :mod:`torchrepro.records.format`).
        same_step: Whether the step numbers must agree too (off for a resumed process,
            which counts from 0 again).

    Raises:
        RecordError: The entries were digested with different algorithms: not comparable.

    Examples:
        >>> a = {"step": 3, "optimizer": 0, "params": {"w": "aa", "b": "bb"}}
        >>> compare_entries(a, dict(a)) is None
        True
        >>> compare_entries(a, {**a, "params": {"w": "aa", "b": "cc"}})
        EntryDifference(keys=('params.b',), rank=None, ranks=())
        >>> compare_entries({**a, "rng": {"numpy": "n1"}}, {**a, "rng": {"numpy": "n2"}}) is None
        True
    """
    if RANKS not in a or RANKS not in b:
        keys = _differing(a, b, same_step)
        return EntryDifference(keys) if keys else None
    ours, theirs = a[RANKS], b[RANKS]
    if len(ours) != len(theirs):
        return EntryDifference((STEPS,))
    differing = {}
    for rank, (x, y) in enumerate(zip(ours, theirs)):
        keys = _differing(x, y, same_step)
        if keys:
            differing[rank] = keys
    if not differing:
        return None
    first = min(differing, key=lambda rank: (causal_rank(section_of(differing[rank][0])), rank))
    return EntryDifference(differing[first], first, tuple(sorted(differing)))


def describe_difference(keys: Sequence[str]) -> str:
    """The first differing value, in words.

    A batch's tensor is named by its label (structure path, shape, dtype), and by the
    batch's place in the step when it is not the step's first (a micro-batch).

    Examples:
        >>> describe_difference(["grads.fc.weight", "grads.fc.bias"])
        'gradients of fc.weight (+1 more)'
        >>> describe_difference(['batch[0]["input_ids"] 16x16 int64'])
        'the input batch (batch["input_ids"] 16x16 int64)'
        >>> describe_difference(["batch[2][1] 32 int64"])
        'the input batch (batch[1] 32 int64, batch 3 of the step)'
    """
    if not keys:
        return "the runs recorded a different number of steps"
    key, section = keys[0], section_of(keys[0])
    if section == BATCH:
        place, _, label = key[len(BATCH) + 1 :].partition("]")
        which = f", batch {int(place) + 1} of the step" if place.isdigit() and place != "0" else ""
        return f"{_SECTION_WORDS[section]} ({BATCH}{label}{which})"
    if section == STEPS:
        return f"{_SECTION_WORDS[section]} ({key})"
    name = key.split(".", 1)[1] if "." in key else key
    more = f" (+{len(keys) - 1} more)" if len(keys) > 1 else ""
    return f"{_SECTION_WORDS.get(section, section)} of {name}{more}"
