"""Samplers whose order is a function of (seed, key, epoch), and which can start late.

The DataLoader hooks (:mod:`torchrepro.data.loaders`) install them in tracked loaders.
Starting at batch ``b`` slices the epoch's index list at ``b * batch_size``: no skipped
sample is ever loaded. A :class:`ResumableSampler` yields :class:`SampleIndex` values,
ints that also carry their epoch's random stream for :func:`torchrepro.sample_rng`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import Sampler
from torch.utils.data.distributed import DistributedSampler

from torchrepro._derive import derive_seed
from torchrepro._sources import seed_generator


class SampleIndex(int):
    """A dataset index that also carries the random stream of its loader and epoch.

    Tracked loaders hand these to ``__getitem__``; they behave as plain ints everywhere
    (indexing lists, tensors, arrays) and survive pickling to worker processes.
    :func:`torchrepro.sample_rng` reads ``stream`` to seed the sample.

    Example:
        >>> index = SampleIndex(7, stream=123)
        >>> [10, 11, 12, 13, 14, 15, 16, 17][index], index.stream
        (17, 123)
    """

    stream: int

    def __new__(cls, value: int, stream: int) -> SampleIndex:
        self = super().__new__(cls, value)
        self.stream = stream
        return self

    def __reduce__(self) -> tuple[type[SampleIndex], tuple[int, int]]:
        return (SampleIndex, (int(self), self.stream))

    def __repr__(self) -> str:
        return f"SampleIndex({int(self)}, stream={self.stream})"


class ResumableSampler(Sampler[int]):
    """A sampler whose order is a function of (seed, key, epoch), and which can start late.

    Installed by the DataLoader hook for tracked loaders. Starting at batch ``b`` slices
    the epoch's index list at ``b * batch_size``: no skipped sample is ever loaded, and
    the samples that follow are the ones an uninterrupted run would have seen.

    Args:
        data_source: The dataset (only its length is used).
        shuffle: Draw a permutation per epoch; else the indices in order.
        seed: The seed the order and sample streams derive from.
        key: Keys distinguishing this sampler from others of the same seed.
        batch_size: Samples per batch, to convert a batch position into a sample offset.

    Example:
        >>> sampler = ResumableSampler(range(10), shuffle=True, seed=11, batch_size=2)
        >>> sampler.order(1)
        [8, 7, 6, 4, 3, 1, 2, 5, 0, 9]
        >>> sampler.set_position(epoch=1, batch=4)
        >>> [int(index) for index in sampler]  # epoch 1 from its fifth batch on
        [0, 9]
    """

    def __init__(
        self,
        data_source: Sized,
        *,
        shuffle: bool,
        seed: int,
        key: tuple[int, ...] = (),
        batch_size: int = 1,
    ) -> None:
        self.data_source = data_source
        self.shuffle = shuffle
        self.seed = seed
        self.key = key
        self.batch_size = batch_size
        self.epoch = 0
        self.batch = 0

    def set_position(self, epoch: int, batch: int = 0) -> None:
        """Makes the next iteration yield epoch ``epoch`` from batch ``batch`` on."""
        self.epoch, self.batch = epoch, batch

    def order(self, epoch: int) -> list[int]:
        """The full index order of ``epoch``."""
        count = len(self.data_source)
        if not self.shuffle:
            return list(range(count))
        generator = seed_generator(
            torch.Generator(), derive_seed(self.seed, "order", *self.key, epoch)
        )
        return [int(i) for i in torch.randperm(count, generator=generator).tolist()]

    def __iter__(self) -> Iterator[int]:
        epoch, start = self.epoch, self.batch * self.batch_size
        stream = derive_seed(self.seed, "sample", *self.key, epoch)
        for index in itertools.islice(self.order(epoch), start, None):
            yield SampleIndex(index, stream)

    def __len__(self) -> int:
        return len(self.data_source)


class ResumableDistributedSampler(Sampler[int]):
    """A user's ``DistributedSampler`` that can start late; installed for tracked loaders.

    The order is the wrapped sampler's (its seed and the epoch given to ``set_epoch``);
    starting at batch ``b`` slices that order at ``b * batch_size``, so no skipped sample
    is loaded. ``set_epoch`` and other attributes reach the wrapped sampler.

    Args:
        sampler: The ``DistributedSampler`` the user passed to the DataLoader.
        batch_size: Samples per batch, to convert a batch position into a sample offset.

    Example:
        >>> inner = DistributedSampler(range(10), num_replicas=2, rank=0, seed=5)
        >>> sampler = ResumableDistributedSampler(inner, batch_size=2)
        >>> sampler.set_position(epoch=0, batch=1)
        >>> len(list(sampler))
        3
    """

    def __init__(self, sampler: DistributedSampler[Any], *, batch_size: int = 1) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.batch = 0

    @property
    def epoch(self) -> int:
        """The epoch the wrapped sampler was last given with ``set_epoch``."""
        return int(self.sampler.epoch)

    def set_epoch(self, epoch: int) -> None:
        """Passes ``epoch`` to the wrapped sampler, as ``DistributedSampler.set_epoch``."""
        self.sampler.set_epoch(epoch)

    def set_position(self, epoch: int, batch: int = 0) -> None:
        """Makes the next iteration start at batch ``batch`` (the epoch is the sampler's)."""
        self.batch = batch

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.batch * self.batch_size, None)

    def __len__(self) -> int:
        return len(self.sampler)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this wrapper lacks (num_replicas, rank, seed, shuffle...).
        if name == "sampler":
            raise AttributeError(name)
        return getattr(self.sampler, name)
