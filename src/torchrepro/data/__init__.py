"""DataLoader seeding: shuffle orders and worker streams that repeat, and never collide.

After ``seed_everything(seed)`` (``workers=True``, the default) every DataLoader created
without a ``generator`` gets its own, seeded from the seed, the rank and the loader's
creation index, so the shuffle order no longer depends on anything else drawing from the
global torch RNG (a validation pass, a model change, a different ``num_workers``). Its
workers seed Python, numpy and torch from seed, rank, worker id and epoch. Loaders over a
map-style dataset are *tracked*: :func:`torchrepro.state_dict` records their positions and
:func:`torchrepro.load_state_dict` makes their next ``iter()`` start where the saved run
stood, without loading the skipped batches. Inside ``__getitem__``, ``sample_rng(index)``
makes augmentation depend on the sample only; without it, each batch is loaded under
streams of its own (:mod:`torchrepro.data.batches`), so augmentation depends on the batch,
not on the worker that loads it.

Switch it off with ``seed_everything(seed, workers=False)``.

Its modules, each importing only those listed before it:

- :mod:`~torchrepro.data.workers`: seeding inside a worker (``seed_worker``); light, as a
  spawned worker imports it.
- :mod:`~torchrepro.data.batches`: the batch streams each batch is loaded under; light too.
- :mod:`~torchrepro.data.samplers`: resumable samplers (a ``RandomSampler``, a
  ``SequentialSampler``, a ``DistributedSampler`` wrapper) and the ``SampleIndex`` they yield.
- :mod:`~torchrepro.data.loaders`: the DataLoader hooks and the tracked loaders' positions.
- :mod:`~torchrepro.data.per_sample`: ``sample_rng`` and ``seed_per_sample``.

Examples:
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> def order():
    ...     torchrepro.seed_everything(11)
    ...     loader = DataLoader(TensorDataset(torch.arange(8)), batch_size=4, shuffle=True)
    ...     torch.rand(100)  # another consumer of the global torch RNG
    ...     return [batch.tolist() for (batch,) in loader]
    >>> order() == order()
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torchrepro.data.loaders import LoaderPosition as LoaderPosition
    from torchrepro.data.loaders import adopt_loader as adopt_loader
    from torchrepro.data.loaders import apply_positions as apply_positions
    from torchrepro.data.loaders import check_positions as check_positions
    from torchrepro.data.loaders import configure_loaders as configure_loaders
    from torchrepro.data.loaders import loader_config as loader_config
    from torchrepro.data.loaders import loader_positions as loader_positions
    from torchrepro.data.loaders import set_loader_config as set_loader_config
    from torchrepro.data.per_sample import sample_rng as sample_rng
    from torchrepro.data.per_sample import sample_seed as sample_seed
    from torchrepro.data.per_sample import seed_per_sample as seed_per_sample
    from torchrepro.data.samplers import ResumableDistributedSampler as ResumableDistributedSampler
    from torchrepro.data.samplers import ResumableRandomSampler as ResumableRandomSampler
    from torchrepro.data.samplers import ResumableSampler as ResumableSampler
    from torchrepro.data.samplers import ResumableSequentialSampler as ResumableSequentialSampler
    from torchrepro.data.samplers import SampleIndex as SampleIndex
    from torchrepro.data.workers import seed_worker as seed_worker
    from torchrepro.data.workers import worker_init_fn as worker_init_fn

# Imported on first use: a spawned worker imports this package on its way to the light
# workers module, and must not pay for the loader hooks.
_OWNERS = {
    "LoaderPosition": "loaders",
    "ResumableDistributedSampler": "samplers",
    "ResumableRandomSampler": "samplers",
    "ResumableSampler": "samplers",
    "ResumableSequentialSampler": "samplers",
    "SampleIndex": "samplers",
    "adopt_loader": "loaders",
    "apply_positions": "loaders",
    "check_positions": "loaders",
    "configure_loaders": "loaders",
    "loader_config": "loaders",
    "loader_positions": "loaders",
    "sample_rng": "per_sample",
    "sample_seed": "per_sample",
    "seed_per_sample": "per_sample",
    "seed_worker": "workers",
    "set_loader_config": "loaders",
    "worker_init_fn": "workers",
}

__all__ = sorted(_OWNERS)


def __getattr__(name: str) -> Any:
    owner = _OWNERS.get(name)
    if owner is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{owner}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
