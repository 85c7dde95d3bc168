"""Comparing runs: one comparison of two record entries, and one vocabulary of causes.

:func:`compare_entries` (:mod:`~torchrepro.compare.entries`) is how ``torchrepro diff``
and ``torchrepro check`` alike decide whether two entries match and what the training
computed differently, in causal order; :func:`rng_differences`
(:mod:`~torchrepro.compare.rng`) which RNG states differ and whether they were drawn from;
:func:`environment_differences` (:mod:`~torchrepro.compare.environment`) what differs
between the manifests; :func:`classify` and :func:`diagnose`
(:mod:`~torchrepro.compare.causes`) turn all of it, with the op localization and the
settings of the runs, into a diagnosis category and the "likely causes" lines both
print; :func:`diff_records` (:mod:`~torchrepro.compare.diff`) compares two record files.
Nothing here imports torch.

Examples:
    >>> model = torch.nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> with torchrepro.record("run.jsonl"):
    ...     for _ in range(2):
    ...         opt.zero_grad(); model(torch.ones(1, 2)).sum().backward(); opt.step()
    >>> diff_records("run.jsonl", "run.jsonl").identical
    True
"""

from __future__ import annotations

from torchrepro.compare.causes import Diagnosis, classify, diagnose, render_causes
from torchrepro.compare.diff import RecordDiff, diff_records
from torchrepro.compare.entries import EntryDifference, compare_entries, describe_difference
from torchrepro.compare.environment import EnvDifference, environment_differences
from torchrepro.compare.rng import RngDifference, rng_differences

__all__ = [
    "Diagnosis",
    "EntryDifference",
    "EnvDifference",
    "RecordDiff",
    "RngDifference",
    "classify",
    "compare_entries",
    "describe_difference",
    "diagnose",
    "diff_records",
    "environment_differences",
    "render_causes",
    "rng_differences",
]
