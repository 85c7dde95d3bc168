"""Batch streams: each batch is loaded under random streams of its own.

A loader created after ``seed_everything`` (``workers=True``) loads each batch of a
map-style dataset (its samples' ``__getitem__`` and the ``collate_fn``) with Python,
numpy, torch's CPU generator and registered host generators seeded from
``derive_seed(stream, crc, n)``: ``stream`` names the loader's epoch, ``crc`` and ``n`` the
batch's sample indices. In the training process (``num_workers=0``) the generators'
previous states are put back afterwards.

Augmentation and random collation (masking, cropping) then depend on the batch alone:
not on ``num_workers``, not on which worker loads it or what it loaded before, not on a
framework fetching batches ahead of the step that uses them, and not on a resume that
starts mid-epoch. With ``num_workers=0`` loading no longer draws from the training's own
streams, so dropout draws the same numbers whatever the loader does.

``stream`` is ``derive_seed(root, "batches", rank, epoch)``, where ``epoch`` is a tracked
loader's epoch, else the ``epoch`` a sampler of the loader was given (``set_epoch``:
``DistributedSampler``, accelerate's ``SeedableRandomSampler``), else the number of
``iter()`` calls the loader has had. It leaves out which loader it is, because
frameworks re-create loaders on resume (accelerate's ``skip_first_batches``).

Not covered, and loaded as PyTorch does: ``IterableDataset`` batches; batches whose
indices are not ints (a batch sampler of one's own that yields other keys); loaders with
``persistent_workers=True`` (their workers outlive an epoch, so they cannot learn the
next epoch's stream).

This module is imported by spawned workers: it imports nothing of torchrepro but what
seeding needs.

Examples:
    >>> from torch.utils.data import DataLoader, Dataset
    >>> class Noisy(Dataset):
    ...     def __len__(self):
    ...         return 8
    ...     def __getitem__(self, index):
    ...         return torch.rand(())
    >>> def batches(workers):
    ...     torchrepro.seed_everything(11)
    ...     loader = DataLoader(Noisy(), batch_size=2, shuffle=True, num_workers=workers)
    ...     return torch.cat(list(loader))
    >>> torch.equal(batches(0), batches(2))
    True
"""

from __future__ import annotations

import functools
import zlib
from array import array
from collections.abc import Callable
from typing import Any

from torch.utils.data._utils import fetch

from torchrepro._derive import derive_seed
from torchrepro._sources import available_sources, capture_all, restore_all, seed_all

_worker_stream: int | None = None  # in a worker: the stream its init function brought
_installed = False


def epoch_stream(root: int, rank: int, epoch: int) -> int:
    """The stream of one epoch of a loader on one rank.

    Examples:
        >>> epoch_stream(11, 0, 0) != epoch_stream(11, 0, 1)
        True
    """
    return derive_seed(root, "batches", rank, epoch)


def batch_seed(stream: int, indices: object) -> int | None:
    """The seed a batch is loaded under; ``None`` when its indices are not ints.

    Examples:
        >>> batch_seed(5, [3, 1, 2]) == batch_seed(5, [3, 1, 2]) != batch_seed(5, [1, 2, 3])
        True
        >>> batch_seed(5, [(3, "long")]) is None
        True
    """
    keys = indices if isinstance(indices, (list, tuple)) else [indices]
    if not all(isinstance(key, int) and not isinstance(key, bool) for key in keys):
        return None
    try:
        packed = array("q", keys).tobytes()
    except OverflowError:
        return None
    return derive_seed(stream, zlib.crc32(packed), len(keys))


def _fetch_seeded(original: Callable[[Any, Any], Any], fetcher: Any, indices: Any) -> Any:
    stream = fetcher.__dict__.get("_torchrepro_stream", _worker_stream)
    seed = None if stream is None else batch_seed(stream, indices)
    if seed is None:
        return original(fetcher, indices)
    sources = available_sources(host_only=True)
    if _worker_stream is not None:  # a worker's own streams serve nothing but loading
        seed_all(seed, sources)
        return original(fetcher, indices)
    saved = capture_all(sources)
    seed_all(seed, sources)
    try:
        return original(fetcher, indices)
    finally:
        restore_all(saved)


def install() -> None:
    """Makes map-style fetches in this process load under their batch's seed, once."""
    global _installed
    if _installed:
        return
    original = fetch._MapDatasetFetcher.fetch

    @functools.wraps(original)
    def seeded(self: Any, possibly_batched_index: Any) -> Any:
        return _fetch_seeded(original, self, possibly_batched_index)

    fetch._MapDatasetFetcher.fetch = seeded  # type: ignore[method-assign]
    _installed = True


def use_in_main_process(fetcher: object, stream: int | None) -> None:
    """Gives a single-process iterator's fetcher the epoch's stream."""
    fetcher.__dict__["_torchrepro_stream"] = stream


def use_in_worker(stream: int | None) -> None:
    """In a worker (from its init function): load every batch under ``stream``'s seeds."""
    global _worker_stream
    _worker_stream = stream
    if stream is not None:
        install()
