"""The exception tree: one root, subclasses that also derive from the matching builtin."""

from __future__ import annotations


class TorchReproError(RuntimeError):
    """Root of every error torchrepro raises."""


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
