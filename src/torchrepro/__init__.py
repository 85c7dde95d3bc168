"""torchrepro: PyTorch training that gives the same result every time, and proof of it.

Example:
    >>> import torchrepro
    >>> torchrepro.seed_everything(11)
    11
"""

from __future__ import annotations

from torchrepro._derive import derive_seed
from torchrepro.data import sample_rng, seed_per_sample, seed_worker, worker_init_fn
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
from torchrepro.state import (
    RNGState,
    capture_rng,
    load_checkpoint,
    load_rng,
    load_state_dict,
    register_generator,
    restore_rng,
    save_checkpoint,
    save_rng,
    state_dict,
)

__version__ = "0.1.0"

__all__ = [
    "DeterminismError",
    "DeterminismStatus",
    "RNGState",
    "RecordError",
    "SeedError",
    "StateError",
    "TorchReproError",
    "capture_rng",
    "derive_seed",
    "determinism_status",
    "deterministic",
    "enable_determinism",
    "isolate_rng",
    "load_checkpoint",
    "load_rng",
    "load_state_dict",
    "numpy_generator",
    "register_generator",
    "restore_rng",
    "root_seed",
    "sample_rng",
    "save_checkpoint",
    "save_rng",
    "seed_everything",
    "seed_per_sample",
    "seed_worker",
    "state_dict",
    "torch_generator",
    "worker_init_fn",
]
