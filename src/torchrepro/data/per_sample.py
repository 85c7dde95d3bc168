"""Per-sample seeding: a sample's randomness depends on (seed, loader, epoch, index) only.

Inside ``__getitem__``, ``with sample_rng(index):`` (or wrapping the dataset with
:func:`seed_per_sample`) seeds Python, numpy, torch's CPU generator and registered host
generators for that one sample and puts their previous states back afterwards.
Augmentation then no longer depends on which worker loads a sample or how far it has got:
the stream is the same for any ``num_workers``, with or without ``persistent_workers``,
and after a resume at any batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TypeVar

from torch.utils.data import Dataset

from torchrepro._derive import derive_seed, require_int
from torchrepro._sources import available_sources, capture_all, restore_all, seed_all
from torchrepro.data import loaders

_T = TypeVar("_T")


def sample_seed(index: int) -> int:
    """The seed of one sample: a function of root seed, loader, epoch and ``index`` only.

    A :class:`~torchrepro.data.samplers.SampleIndex` from a tracked loader brings its
    loader's and epoch's stream; a plain int (direct ``dataset[i]``, an untracked loader)
    is seeded from the root seed and the index alone, the same in every epoch.

    Raises:
        SeedError: ``index`` is negative, or no root seed is set.

    Examples:
        >>> torchrepro.seed_everything(11)
        11
        >>> sample_seed(3)
        14259102859755869429
    """
    stream = getattr(index, "stream", None)
    if stream is None:
        stream = derive_seed(loaders.current_root(), "sample")
    return derive_seed(stream, require_int(index, "the sample index"))


@contextlib.contextmanager
def sample_rng(index: int) -> Iterator[int]:
    """Seeds the host random generators for one sample, and puts them back afterwards.

    Python ``random``, numpy's global generator, torch's CPU generator and registered
    host generators are seeded from :func:`sample_seed` on entry and restored on exit, so
    augmentation drawn inside depends on the sample, not on the worker that loads it,
    and with ``num_workers=0`` the training's own random streams are not disturbed.

    Args:
        index: The index ``__getitem__`` received.

    Yields:
        The sample's seed.

    Examples:
        >>> class Noisy(Dataset):
        ...     def __len__(self):
        ...         return 8
        ...     def __getitem__(self, index):
        ...         with sample_rng(index):
        ...             return float(torch.rand(()))
        >>> torchrepro.seed_everything(11)
        11
        >>> dataset = Noisy()
        >>> dataset[3] == dataset[3] != dataset[4]  # the same draw wherever sample 3 loads
        True
    """
    seed = sample_seed(index)
    sources = available_sources(host_only=True)
    saved = capture_all(sources)
    seed_all(seed, sources)
    try:
        yield seed
    finally:
        restore_all(saved)


class _PerSampleSeeded(Dataset[_T]):
    """A map-style dataset whose every ``__getitem__`` runs under :func:`sample_rng`."""

    def __init__(self, dataset: Dataset[_T]) -> None:
        self.dataset = dataset

    def __getitem__(self, index: int) -> _T:
        with sample_rng(index):
            return self.dataset[index]

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]


def seed_per_sample(dataset: Dataset[_T]) -> Dataset[_T]:
    """Wraps a map-style dataset so each sample's randomness depends only on its index.

    Equivalent to putting ``with sample_rng(index):`` around the dataset's
    ``__getitem__``. The wrapped dataset is available as ``.dataset``.

    Examples:
        >>> class Noisy(Dataset):
        ...     def __len__(self):
        ...         return 8
        ...     def __getitem__(self, index):
        ...         return float(torch.rand(()))
        >>> torchrepro.seed_everything(11)
        11
        >>> dataset = seed_per_sample(Noisy())
        >>> dataset[3] == dataset[3] != dataset[4], len(dataset), type(dataset.dataset).__name__
        (True, 8, 'Noisy')
    """
    return _PerSampleSeeded(dataset)
