"""torchrepro: PyTorch training that gives the same result every time, and proof of it.

Example:
    >>> import torchrepro
    >>> torchrepro.seed_everything(11)
    11
"""

from __future__ import annotations

from torchrepro._derive import derive_seed
from torchrepro.data import seed_worker, worker_init_fn
from torchrepro.determinism import (
    DeterminismStatus,
    determinism_status,
    deterministic,
    enable_determinism,
)
from torchrepro.detops import (
    CostReport,
    determinism_cost,
    deterministic_ops,
    patch_nondeterministic_ops,
    unpatch_nondeterministic_ops,
)
from torchrepro.errors import (
    DeterminismError,
    RecordError,
    ReplacementError,
    SeedError,
    StateError,
    TorchReproError,
)
from torchrepro.seeding import (
    isolate_rng,
    numpy_generator,
    root_seed,
    seed_everything,
    torch_generator,
)

__version__ = "0.1.0"

__all__ = [
    "CostReport",
    "DeterminismError",
    "DeterminismStatus",
    "RecordError",
    "ReplacementError",
    "SeedError",
    "StateError",
    "TorchReproError",
    "derive_seed",
    "determinism_cost",
    "determinism_status",
    "deterministic",
    "deterministic_ops",
    "enable_determinism",
    "isolate_rng",
    "numpy_generator",
    "patch_nondeterministic_ops",
    "root_seed",
    "seed_everything",
    "seed_worker",
    "torch_generator",
    "unpatch_nondeterministic_ops",
    "worker_init_fn",
]
