"""The determinism levels that `torchrepro cost` and `torchrepro doctor` compare.

Cheapest switches first, so the first level under which something repeats is what it needs:
PyTorch's defaults, the common recipe, PyTorch's strict mode as it ships, and torchrepro's
deterministic mode (strict, the op replacements of `torchrepro.detops`, no NaN fill).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.utils.deterministic

from torchrepro import detops


@dataclasses.dataclass(frozen=True)
class Flags:
    """The switches a level sets, all of which one process can change at any time."""

    cudnn_deterministic: bool
    cudnn_benchmark: bool
    deterministic_algorithms: bool
    warn_only: bool
    fill_uninitialized_memory: bool
    patched: bool
    forced: bool

    @classmethod
    def capture(cls) -> Flags:
        """The switches as they are now."""
        return cls(
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.utils.deterministic.fill_uninitialized_memory,  # type: ignore[attr-defined]
            bool(detops.patched_ops()),
            detops.forced(),
        )

    def apply(self) -> None:
        """Sets every switch to this value."""
        torch.backends.cudnn.deterministic = self.cudnn_deterministic
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.use_deterministic_algorithms(self.deterministic_algorithms, warn_only=self.warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = (  # type: ignore[attr-defined]
            self.fill_uninitialized_memory
        )
        if self.patched:
            detops.patch_nondeterministic_ops(force=self.forced)
        else:
            detops.unpatch_nondeterministic_ops()


@dataclasses.dataclass(frozen=True)
class Level:
    """One level: its name, the switches in words, and the switches.

    `cublas_workspace`: the level also needs ``CUBLAS_WORKSPACE_CONFIG`` set before CUDA
    starts (torchrepro sets it; a process cannot change it once cuBLAS runs).
    """

    name: str
    description: str
    flags: Flags
    cublas_workspace: bool = False


LEVELS: tuple[Level, ...] = (
    Level("defaults", "PyTorch defaults", Flags(False, False, False, False, True, False, False)),
    Level(
        "recipe",
        "cudnn.deterministic, benchmark off",
        Flags(True, False, False, False, True, False, False),
    ),
    Level(
        "strict",
        "recipe + use_deterministic_algorithms(True)",
        Flags(True, False, True, False, True, False, False),
    ),
    Level(
        "torchrepro",
        "strict + patched ops + fill_uninitialized_memory off",
        Flags(True, False, True, False, False, True, False),
        cublas_workspace=True,
    ),
)
NAMES: tuple[str, ...] = tuple(level.name for level in LEVELS)
