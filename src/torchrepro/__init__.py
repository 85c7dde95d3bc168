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
from torchrepro.errors import (
    DeterminismError,
    RecordError,
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
    "DeterminismError",
    "DeterminismStatus",
    "RecordError",
    "SeedError",
    "StateError",
    "TorchReproError",
    "derive_seed",
    "determinism_status",
    "deterministic",
    "enable_determinism",
    "isolate_rng",
    "numpy_generator",
    "root_seed",
    "seed_everything",
    "seed_worker",
    "torch_generator",
    "worker_init_fn",
]
