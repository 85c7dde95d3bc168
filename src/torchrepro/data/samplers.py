"""Samplers whose order is a function of (seed, key, epoch), and which can start late.

The DataLoader hooks (:mod:`torchrepro.data.loaders`) install them in tracked loaders,
where PyTorch would have made its own: :class:`ResumableRandomSampler` is a
``RandomSampler`` and :class:`ResumableSequentialSampler` a ``SequentialSampler``, with
their attributes, so a framework that inspects ``loader.sampler`` (Lightning's shuffle
detection, accelerate's ``prepare``) sees what PyTorch would have given it. Starting at
batch ``b`` slices the epoch's index list at ``b * batch_size``: no skipped sample is ever
loaded. Both yield :class:`SampleIndex` values, ints that also carry their epoch's random
stream for :func:`torchrepro.sample_rng`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sized
from typing import Any, ClassVar

import torch
from torch.utils.data import RandomSampler, Sampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from torchrepro._derive import derive_seed
from torchrepro._sources import seed_generator


class SampleIndex(int):
    """A dataset index that also carries the random stream of its loader and epoch.

    Tracked loaders hand these to ``__getitem__``; they behave as plain ints everywhere
    (indexing lists, tensors, arrays) and survive pickling to worker processes.
    :func:`torchrepro.sample_rng` reads ``stream`` to seed the sample.

    Examples:
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
    """What the two resumable samplers share: an order per epoch, and a late start.

    The order of epoch ``e`` is a function of ``(seed, key, e)`` alone: it draws from no
    generator a framework might reseed or synchronise, so it can be recomputed for a
    resume without replaying anything. Each iteration starts where :meth:`set_position`
    put it (the DataLoader hook does so before every epoch), else at the epoch after the
    previous iteration's: a loader that re-uses the sampler without the hook (one a
    framework re-created around it) still gets a new order every epoch.

    Made with :func:`resumable_sampler`, or one of its two subclasses.
    """

    shuffle: ClassVar[bool]
    data_source: Sized

    def _start(self, seed: int, key: tuple[int, ...], batch_size: int) -> None:
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
        self.set_position(epoch + 1)
        stream = derive_seed(self.seed, "sample", *self.key, epoch)
        return (SampleIndex(i, stream) for i in itertools.islice(self.order(epoch), start, None))

    def __len__(self) -> int:
        return len(self.data_source)


class ResumableRandomSampler(ResumableSampler, RandomSampler):
    """A ``RandomSampler`` whose permutation is a function of (seed, key, epoch).

    ``generator`` is the loader's, as PyTorch's DataLoader gives its ``RandomSampler``;
    the permutation does not draw from it.

    Args:
        data_source: The dataset (only its length is used).
        seed: The seed the order and sample streams derive from.
        key: Keys distinguishing this sampler from others of the same seed.
        batch_size: Samples per batch, to convert a batch position into a sample offset.
        generator: The loader's generator, kept as the ``generator`` attribute.

    Examples:
        >>> sampler = ResumableRandomSampler(range(10), seed=11, batch_size=2)
        >>> sampler.order(1)
        [8, 7, 6, 4, 3, 1, 2, 5, 0, 9]
        >>> sampler.set_position(epoch=1, batch=4)
        >>> [int(index) for index in sampler]  # epoch 1 from its fifth batch on
        [0, 9]
        >>> isinstance(sampler, RandomSampler), sampler.num_samples, sampler.replacement
        (True, 10, False)
    """

    shuffle = True

    def __init__(
        self,
        data_source: Sized,
        *,
        seed: int,
        key: tuple[int, ...] = (),
        batch_size: int = 1,
        generator: torch.Generator | None = None,
    ) -> None:
        RandomSampler.__init__(self, data_source, generator=generator)
        self._start(seed, key, batch_size)


class ResumableSequentialSampler(ResumableSampler, SequentialSampler):
    """A ``SequentialSampler`` that can start late (its order is always ``0, 1, ...``).

    Args:
        data_source: The dataset (only its length is used).
        seed: The seed the sample streams derive from.
        key: Keys distinguishing this sampler from others of the same seed.
        batch_size: Samples per batch, to convert a batch position into a sample offset.

    Examples:
        >>> sampler = ResumableSequentialSampler(range(5), seed=11, batch_size=2)
        >>> sampler.set_position(epoch=0, batch=1)
        >>> [int(index) for index in sampler], isinstance(sampler, SequentialSampler)
        ([2, 3, 4], True)
    """

    shuffle = False

    def __init__(
        self, data_source: Sized, *, seed: int, key: tuple[int, ...] = (), batch_size: int = 1
    ) -> None:
        SequentialSampler.__init__(self, data_source)
        self._start(seed, key, batch_size)


def resumable_sampler(
    data_source: Sized,
    *,
    shuffle: bool,
    seed: int,
    key: tuple[int, ...] = (),
    batch_size: int = 1,
    generator: torch.Generator | None = None,
) -> ResumableSampler:
    """The resumable sampler standing for the one PyTorch makes for ``shuffle``.

    Examples:
        >>> type(resumable_sampler(range(4), shuffle=False, seed=1)).__name__
        'ResumableSequentialSampler'
    """
    if shuffle:
        return ResumableRandomSampler(
            data_source, seed=seed, key=key, batch_size=batch_size, generator=generator
        )
    return ResumableSequentialSampler(data_source, seed=seed, key=key, batch_size=batch_size)


_OWN = frozenset({"sampler", "batch_size", "batch"})


class ResumableDistributedSampler(DistributedSampler[Any]):
    """A user's ``DistributedSampler`` that can start late; installed for tracked loaders.

    A ``DistributedSampler`` itself, whose every attribute but ``sampler``, ``batch_size``
    and ``batch`` is the wrapped sampler's (read and written through): the order is the
    wrapped sampler's (its seed, and the epoch given to ``set_epoch`` on either object).
    Starting at batch ``b`` slices that order at ``b * batch_size``, so no skipped sample
    is loaded; the iteration after starts at batch 0 again.

    Args:
        sampler: The ``DistributedSampler`` the user passed to the DataLoader.
        batch_size: Samples per batch, to convert a batch position into a sample offset.

    Examples:
        >>> inner = DistributedSampler(range(10), num_replicas=2, rank=0, seed=5)
        >>> sampler = ResumableDistributedSampler(inner, batch_size=2)
        >>> sampler.set_position(epoch=0, batch=1)
        >>> len(list(sampler)), len(list(sampler)), sampler.num_replicas
        (3, 5, 2)
    """

    # DistributedSampler.__init__ is not called: the wrapped sampler holds the state.
    def __init__(self, sampler: DistributedSampler[Any], *, batch_size: int = 1) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.batch = 0

    def set_epoch(self, epoch: int) -> None:
        """Passes ``epoch`` to the wrapped sampler, as ``DistributedSampler.set_epoch``."""
        self.sampler.set_epoch(epoch)

    def set_position(self, epoch: int, batch: int = 0) -> None:
        """Makes the next iteration start at batch ``batch`` (the epoch is the sampler's)."""
        self.batch = batch

    def __iter__(self) -> Iterator[Any]:
        start, self.batch = self.batch * self.batch_size, 0
        return itertools.islice(iter(self.sampler), start, None)

    def __len__(self) -> int:
        return len(self.sampler)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this wrapper lacks (epoch, num_replicas, rank, seed...).
        if name in _OWN:
            raise AttributeError(name)
        return getattr(self.sampler, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.sampler, name, value)
