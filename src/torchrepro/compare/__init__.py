"""Comparing runs: one comparison of two record entries, and one vocabulary of causes.

:func:`compare_entries` (:mod:`~torchrepro.compare.entries`) is how ``torchrepro diff``
and ``torchrepro check`` alike decide whether two entries match and what differs, in
causal order; :func:`diagnose` (:mod:`~torchrepro.compare.causes`) turns what differs, the
environment differences, the op localization and the settings of the runs into the
"likely causes" lines both print; :func:`diff_records` (:mod:`~torchrepro.compare.diff`)
compares two record files. Nothing here imports torch.

Example:
    >>> model = torch.nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> with torchrepro.record("run.jsonl"):
    ...     for _ in range(2):
    ...         opt.zero_grad(); model(torch.ones(1, 2)).sum().backward(); opt.step()
    >>> diff_records("run.jsonl", "run.jsonl").identical
    True
"""

from __future__ import annotations

from torchrepro.compare.causes import (
    EnvDifference,
    diagnose,
    environment_differences,
    render_causes,
)
from torchrepro.compare.diff import RecordDiff, diff_records
from torchrepro.compare.entries import EntryDifference, compare_entries, describe_difference

__all__ = [
    "EntryDifference",
    "EnvDifference",
    "RecordDiff",
    "compare_entries",
    "describe_difference",
    "diagnose",
    "diff_records",
    "environment_differences",
    "render_causes",
]
