"""torchrepro: PyTorch training that gives the same result every time, and proof of it.

Example:
    >>> import torchrepro
    >>> torchrepro.seed_everything(11)
    11
"""

from __future__ import annotations

from torchrepro._derive import derive_seed
from torchrepro.check import CheckReport, check_reproducible
from torchrepro.compare import RecordDiff, diff_records
from torchrepro.data import sample_rng, seed_per_sample, seed_worker, worker_init_fn
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
from torchrepro.distributed import split_streams, verify_replicas
from torchrepro.env import environment
from torchrepro.errors import (
    CheckError,
    DeterminismError,
    DistributedError,
    FingerprintError,
    RecordError,
    ReplacementError,
    SeedError,
    StateError,
    TorchReproError,
)
from torchrepro.fingerprint import Digest, fingerprint
from torchrepro.records import Record, Recorder, log, read_record, record
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
    "CheckError",
    "CheckReport",
    "CostReport",
    "DeterminismError",
    "DeterminismStatus",
    "Digest",
    "DistributedError",
    "FingerprintError",
    "RNGState",
    "Record",
    "RecordDiff",
    "RecordError",
    "Recorder",
    "ReplacementError",
    "SeedError",
    "StateError",
    "TorchReproError",
    "capture_rng",
    "check_reproducible",
    "derive_seed",
    "determinism_cost",
    "determinism_status",
    "deterministic",
    "deterministic_ops",
    "diff_records",
    "enable_determinism",
    "environment",
    "fingerprint",
    "isolate_rng",
    "load_checkpoint",
    "load_rng",
    "load_state_dict",
    "log",
    "numpy_generator",
    "patch_nondeterministic_ops",
    "read_record",
    "record",
    "register_generator",
    "restore_rng",
    "root_seed",
    "sample_rng",
    "save_checkpoint",
    "save_rng",
    "seed_everything",
    "seed_per_sample",
    "seed_worker",
    "split_streams",
    "state_dict",
    "torch_generator",
    "unpatch_nondeterministic_ops",
    "verify_replicas",
    "worker_init_fn",
]
