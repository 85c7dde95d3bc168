"""torchrepro: PyTorch training that gives the same result every time, and proof of it.

The names here are what a training script writes; everything else lives in a submodule
imported by name (``torchrepro.state``, ``torchrepro.records``, ``torchrepro.check``,
``torchrepro.detops``, ``torchrepro.errors``, ...). Each name is imported on first use, so
``import torchrepro`` alone imports neither torch nor numpy: the ``torchrepro`` command's
launching process and spawned DataLoader workers load only what they use.

Examples:
    >>> import torchrepro
    >>> torchrepro.seed_everything(11)
    11
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at start-up

__version__ = "0.1.0"

# name -> the module that owns it
_PUBLIC = {
    "TorchReproError": "torchrepro.errors",
    "capture_rng": "torchrepro.state",
    "derive_seed": "torchrepro._derive",
    "determinism_status": "torchrepro.determinism",
    "deterministic": "torchrepro.determinism",
    "enable_determinism": "torchrepro.determinism",
    "fingerprint": "torchrepro.digests",
    "isolate_rng": "torchrepro.seeding",
    "load_checkpoint": "torchrepro.state",
    "load_state_dict": "torchrepro.state",
    "log": "torchrepro.records",
    "numpy_generator": "torchrepro.seeding",
    "record": "torchrepro.records",
    "register_generator": "torchrepro.state",
    "restore_rng": "torchrepro.state",
    "sample_rng": "torchrepro.data",
    "save_checkpoint": "torchrepro.state",
    "seed_everything": "torchrepro.seeding",
    "seed_per_sample": "torchrepro.data",
    "seed_worker": "torchrepro.data",
    "split_streams": "torchrepro.distributed",
    "state_dict": "torchrepro.state",
    "step": "torchrepro.records",
    "torch_generator": "torchrepro.seeding",
    "worker_init_fn": "torchrepro.data",
}

# Names that were public in 0.1.0, and where they live now (see CHANGELOG.md).
_MOVED = {
    "CheckError": "torchrepro.errors",
    "CheckReport": "torchrepro.check",
    "CostReport": "torchrepro.cost",
    "DeterminismError": "torchrepro.errors",
    "DeterminismStatus": "torchrepro.determinism",
    "Digest": "torchrepro.digests",
    "DistributedError": "torchrepro.errors",
    "FingerprintError": "torchrepro.errors",
    "RNGState": "torchrepro.state",
    "Record": "torchrepro.records",
    "RecordDiff": "torchrepro.compare",
    "RecordError": "torchrepro.errors",
    "Recorder": "torchrepro.records",
    "ReplacementError": "torchrepro.errors",
    "SeedError": "torchrepro.errors",
    "StateError": "torchrepro.errors",
    "check_reproducible": "torchrepro.check",
    "determinism_cost": "torchrepro.cost",
    "deterministic_ops": "torchrepro.detops",
    "diff_records": "torchrepro.compare",
    "environment": "torchrepro.env",
    "load_rng": "torchrepro.state",
    "patch_nondeterministic_ops": "torchrepro.detops",
    "read_record": "torchrepro.records",
    "root_seed": "torchrepro.seeding",
    "save_rng": "torchrepro.state",
    "unpatch_nondeterministic_ops": "torchrepro.detops",
    "verify_replicas": "torchrepro.distributed",
}

__all__ = [
    "TorchReproError",
    "capture_rng",
    "derive_seed",
    "determinism_status",
    "deterministic",
    "enable_determinism",
    "fingerprint",
    "isolate_rng",
    "load_checkpoint",
    "load_state_dict",
    "log",
    "numpy_generator",
    "record",
    "register_generator",
    "restore_rng",
    "sample_rng",
    "save_checkpoint",
    "seed_everything",
    "seed_per_sample",
    "seed_worker",
    "split_streams",
    "state_dict",
    "step",
    "torch_generator",
    "worker_init_fn",
]
assert __all__ == sorted(_PUBLIC), "one module owns each public name"


def __getattr__(name: str) -> object:
    owner = _PUBLIC.get(name)
    if owner is None:
        moved = _MOVED.get(name)
        hint = f"; since 0.2.0 it is {moved}.{name}" if moved else ""
        raise AttributeError(f"module 'torchrepro' has no attribute {name!r}{hint}")
    value = getattr(importlib.import_module(owner), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


if TYPE_CHECKING:
    from torchrepro._derive import derive_seed
    from torchrepro.data import sample_rng, seed_per_sample, seed_worker, worker_init_fn
    from torchrepro.determinism import determinism_status, deterministic, enable_determinism
    from torchrepro.digests import fingerprint
    from torchrepro.distributed import split_streams
    from torchrepro.errors import TorchReproError
    from torchrepro.records import log, record, step
    from torchrepro.seeding import isolate_rng, numpy_generator, seed_everything, torch_generator
    from torchrepro.state import (
        capture_rng,
        load_checkpoint,
        load_state_dict,
        register_generator,
        restore_rng,
        save_checkpoint,
        state_dict,
    )
