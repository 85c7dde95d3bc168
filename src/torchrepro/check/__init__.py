"""``torchrepro check``: run a training several times, compare its records, say where and why.

:mod:`~torchrepro.check.orchestrate` runs the check (:func:`check_command`,
:func:`check_reproducible`), :mod:`~torchrepro.check.session` starts, watches and stops
the runs, :mod:`~torchrepro.check.report` holds what was found (:class:`CheckReport`) and
:mod:`~torchrepro.check.plot` draws it. None of them imports torch: the launching process
only starts runs and reads their JSON records.

Examples:
    >>> report = CheckReport(IDENTICAL, ["python", "train.py"], 3, [], steps_compared=5)
    >>> report.exit_code
    <ExitCode.OK: 0>
"""

from __future__ import annotations

from torchrepro.check.orchestrate import check_command, check_reproducible
from torchrepro.check.report import (
    DIVERGED,
    FAILED,
    IDENTICAL,
    CheckReport,
    Divergence,
    RunOutcome,
)

__all__ = [
    "DIVERGED",
    "FAILED",
    "IDENTICAL",
    "CheckReport",
    "Divergence",
    "RunOutcome",
    "check_command",
    "check_reproducible",
]
