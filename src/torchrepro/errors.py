"""The exception tree and the exit codes: one root, subclasses that also derive from the
matching builtin, and each class carries the exit status the ``torchrepro`` command gives it.

Exit status of every verb: 0 success, 1 a finding (runs diverged), 2 a usage error,
3 a run failed, 130 interrupted (Ctrl-C).

Examples:
    >>> int(SeedError("bad seed").exit_code)
    2
    >>> isinstance(SeedError("bad seed"), ValueError)
    True
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What the ``torchrepro`` command's exit status means (click-style: one place)."""

    OK = 0
    FINDING = 1
    USAGE = 2
    RUN_FAILED = 3
    INTERRUPTED = 130


class TorchReproError(RuntimeError):
    """Root of every error torchrepro raises.

    Its message is printable whatever it quotes: control characters (a terminal escape
    code in a damaged file's keys, say) are written as escapes; lines and tabs stay.

    Examples:
        >>> print(TorchReproError("bad key rng." + chr(27) + "[31m"))
        bad key rng.\\x1b[31m
    """

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, *args: object) -> None:
        super().__init__(*(_printable(a) if isinstance(a, str) else a for a in args))


def _printable(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


class SeedError(TorchReproError, ValueError):
    """A seed or seed key that is not acceptable."""


class DeterminismError(TorchReproError):
    """A determinism switch that cannot be applied, or was applied too late."""


class StateError(TorchReproError, ValueError):
    """A saved state that is malformed, of an unknown version, or does not fit this machine."""


class RecordError(TorchReproError, ValueError):
    """A run record that cannot be read or compared."""


class ReplacementError(TorchReproError, ValueError):
    """Arguments that a deterministic op replacement does not support, or that the op rejects."""


class FingerprintError(TorchReproError, TypeError):
    """A value that cannot be digested, or a digest algorithm that does not fit the data."""


class DistributedError(TorchReproError, ValueError):
    """A distributed setting that cannot be applied (a bad replica-check interval)."""


class CheckError(TorchReproError, ValueError):
    """``torchrepro check`` could not be carried out as asked (bad arguments, no command)."""


class RunError(TorchReproError):
    """A command torchrepro started could not start or did not finish (exit status 3)."""

    exit_code = ExitCode.RUN_FAILED


class DoctorError(TorchReproError, ValueError):
    """``torchrepro doctor`` could not be carried out as asked (a device that is not here,
    a probe or model spec that does not load)."""
