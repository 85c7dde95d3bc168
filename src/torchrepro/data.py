"""DataLoader seeding: shuffle orders and worker streams that repeat, and never collide.

After ``seed_everything(seed)`` (``workers=True``, the default) every DataLoader created
without a ``generator`` gets its own, seeded with ``derive_seed(seed, "loader", rank, n)``
where ``n`` counts the loaders created since ``seed_everything``. The shuffle order then
no longer depends on anything else drawing from the global torch RNG (a validation pass,
a model change, a different ``num_workers``).

Every such loader also gets a worker init function that seeds Python, numpy, torch in
each worker with ``derive_seed(seed, "worker", rank, worker_id, base)``, where ``base`` is
the per-epoch seed the loader draws from its generator: distinct across workers, ranks,
epochs and loaders, identical across runs. A user's own ``worker_init_fn`` runs after
ours; a user's own ``generator`` is kept.

Switch it off with ``seed_everything(seed, workers=False)``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, get_worker_info

from torchrepro._derive import SeedLike, derive_seed, normalize_seed
from torchrepro._sources import seed_all
from torchrepro.errors import SeedError

SEED_ENV = "TORCHREPRO_SEED"

WorkerInitFn = Callable[[int], None]


def current_rank() -> int:
    """This process's global rank: from torch.distributed when initialised, else ``RANK``."""
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        return int(distributed.get_rank())
    return int(os.environ.get("RANK", "0"))


def root_seed_from_env() -> int:
    """The root seed exported by ``seed_everything`` or ``torchrepro run``.

    Raises:
        SeedError: No seed is set, or ``TORCHREPRO_SEED`` is not an integer.
    """
    text = os.environ.get(SEED_ENV)
    if text is None:
        raise SeedError(
            f"no root seed: {SEED_ENV} is not set. "
            "Call torchrepro.seed_everything(seed) first, or pass seed= explicitly."
        )
    try:
        value = int(text, 10)
    except ValueError:
        raise SeedError(
            f"{SEED_ENV} must be an integer in [0, 2**64); got {text!r}. "
            f"Set it to a decimal integer, or unset it."
        ) from None
    return normalize_seed(value, what=SEED_ENV)


def seed_worker(worker_id: int, rank: int = 0, seed: SeedLike | None = None) -> int:
    """Seeds Python, numpy and torch in a DataLoader worker; a drop-in for the recipe's.

    Takes the common recipe's ``worker_init_fn(worker_id, rank, seed)`` signature
    (bound with ``functools.partial``) but derives the worker's seed from all of seed,
    rank, worker id and the loader's per-epoch base seed, instead of ``seed + rank``.

    Args:
        worker_id: The worker's index, as DataLoader passes it.
        rank: The process's global rank.
        seed: The root seed; ``None`` reads ``TORCHREPRO_SEED``.

    Returns:
        The seed the worker was seeded with.

    Example:
        >>> init = functools.partial(seed_worker, rank=0, seed=11)
        >>> loader = DataLoader(dataset, num_workers=2, worker_init_fn=init)
    """
    root = root_seed_from_env() if seed is None else normalize_seed(seed)
    info = get_worker_info()
    base = (info.seed - info.id) % 2**64 if info is not None else 0
    worker_seed = derive_seed(root, "worker", rank, worker_id, base)
    seed_all(worker_seed)
    return worker_seed


def worker_init_fn(worker_id: int) -> None:
    """A ``worker_init_fn`` for direct use: root seed from ``TORCHREPRO_SEED``, rank from the
    environment.

    Example:
        >>> torchrepro.seed_everything(11)
        >>> loader = DataLoader(dataset, num_workers=2, worker_init_fn=worker_init_fn)
    """
    seed_worker(worker_id, current_rank())


@dataclass(frozen=True)
class _WorkerSeeder:
    """The worker init function given to loaders; picklable for spawned workers."""

    root: int
    rank: int
    user_fn: WorkerInitFn | None

    def __call__(self, worker_id: int) -> None:
        seed_worker(worker_id, self.rank, self.root)
        if self.user_fn is not None:
            self.user_fn(worker_id)


@dataclass
class _LoaderConfig:
    root: int
    rank: int
    created: int = 0


_config: _LoaderConfig | None = None
_original_init: Callable[..., None] | None = None


def _seeded_init(self: DataLoader[Any], *args: Any, **kwargs: Any) -> None:
    assert _original_init is not None
    config = _config
    if config is None:
        _original_init(self, *args, **kwargs)
        return
    bound = inspect.signature(_original_init).bind(self, *args, **kwargs)
    arguments = bound.arguments
    if arguments.get("generator") is None:
        generator = torch.Generator()
        generator.manual_seed(derive_seed(config.root, "loader", config.rank, config.created))
        arguments["generator"] = generator
    arguments["worker_init_fn"] = _WorkerSeeder(
        config.root, config.rank, arguments.get("worker_init_fn")
    )
    config.created += 1
    _original_init(*bound.args, **bound.kwargs)


def configure_loaders(root: int | None) -> None:
    """Seeds every DataLoader created from now on from ``root``; ``None`` stops it.

    Called by ``seed_everything``; installs the DataLoader hook on first use.
    """
    global _config, _original_init
    _config = None if root is None else _LoaderConfig(root, current_rank())
    if root is not None and _original_init is None:
        _original_init = DataLoader.__init__
        DataLoader.__init__ = _seeded_init  # type: ignore[method-assign]


def loader_config() -> _LoaderConfig | None:
    """The current loader seeding (for isolation): root, rank and loaders created."""
    return None if _config is None else _LoaderConfig(_config.root, _config.rank, _config.created)


def set_loader_config(config: _LoaderConfig | None) -> None:
    """Puts back a value returned by :func:`loader_config`."""
    global _config
    _config = config
