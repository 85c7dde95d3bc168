"""Worker seeding: Python, numpy and torch in each DataLoader worker, from seed, rank and id.

A worker's seed is ``derive_seed(seed, "worker", rank, worker_id, base)``, where ``base``
is the per-epoch seed its loader drew for its workers: distinct across workers, ranks,
epochs and loaders, identical across runs.

A spawned worker unpickles :class:`_WorkerSeeder` by this module's path and so imports
this module: it imports nothing of torchrepro but what seeding needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch.utils.data import get_worker_info

from torchrepro._derive import (
    SeedLike,
    derive_seed,
    normalize_seed,
    require_int,
    root_seed_from_env,
)
from torchrepro._sources import seed_all
from torchrepro.data import batches

WorkerInitFn = Callable[[int], None]


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

    Examples:
        >>> import functools
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> init = functools.partial(seed_worker, rank=0, seed=11)
        >>> loader = DataLoader(TensorDataset(torch.arange(8)), num_workers=2, worker_init_fn=init)
        >>> sorted(int(x) for (x,) in loader)
        [0, 1, 2, 3, 4, 5, 6, 7]
        >>> seed_worker(1, rank=0, seed=11)  # outside a worker the base seed is 0
        15743459173495007334
    """
    require_int(worker_id, "worker_id")
    require_int(rank, "rank")
    root = root_seed_from_env() if seed is None else normalize_seed(seed)
    info = get_worker_info()
    base = (info.seed - info.id) % 2**64 if info is not None else 0
    worker_seed = derive_seed(root, "worker", rank, worker_id, base)
    seed_all(worker_seed)
    return worker_seed


def worker_init_fn(worker_id: int) -> None:
    """A ``worker_init_fn`` for direct use: root seed from ``TORCHREPRO_SEED``, rank from the
    environment.

    Examples:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> torchrepro.seed_everything(11, workers=False)  # exports TORCHREPRO_SEED
        11
        >>> dataset = TensorDataset(torch.arange(8))
        >>> loader = DataLoader(dataset, batch_size=4, num_workers=2, worker_init_fn=worker_init_fn)
        >>> [batch.tolist() for (batch,) in loader]
        [[0, 1, 2, 3], [4, 5, 6, 7]]
    """
    # Imported here, in the worker that calls it: a spawned worker that only unpickles a
    # _WorkerSeeder never needs the distributed module.
    from torchrepro import distributed

    seed_worker(worker_id, distributed.rank())


@dataclass(frozen=True)
class _WorkerSeeder:
    """The worker init function given to loaders; picklable for spawned workers.

    ``stream`` is the epoch's batch stream (:mod:`torchrepro.data.batches`), set by the
    loader hook before each ``iter()`` starts the workers.
    """

    root: int
    rank: int
    user_fn: WorkerInitFn | None
    stream: int | None = None

    def __call__(self, worker_id: int) -> None:
        seed_worker(worker_id, self.rank, self.root)
        batches.use_in_worker(self.stream)
        if self.user_fn is not None:
            self.user_fn(worker_id)
