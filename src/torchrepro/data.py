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

Resumable data order. Every such loader over a map-style dataset with no ``sampler``,
``batch_sampler`` or ``generator`` of the user's also gets a :class:`ResumableSampler`
(``shuffle`` is honoured): the order of epoch ``e`` is drawn from
``derive_seed(seed, "order", rank, n, e)``, so it depends on nothing but the epoch, and
the loader tracks its position (epoch, batches yielded) in the main process. Such loaders
are *tracked*: :func:`torchrepro.state_dict` records their positions and
:func:`torchrepro.load_state_dict` makes their next ``iter()`` start where the saved run
stood, by slicing the index list: the skipped batches are never loaded. Each tracked
loader's generator is also reseeded per epoch from ``derive_seed(seed, "loader", rank, n,
e)``, so worker seeds depend on the epoch only (except with ``persistent_workers``, whose
workers are seeded once, when they start: there, and after a mid-epoch resume, only draws
made under :func:`sample_rng` repeat exactly). A loader over a ``DistributedSampler``
(and no generator or batch sampler of the user's) is tracked too: its epoch is the one the
user gave ``set_epoch``, its order stays the sampler's, and a resume skips the batches
already seen by slicing the sampler's index list. Loaders with another sampler of the
user's and loaders over an ``IterableDataset`` are seeded but not tracked: their position
is the user's to save.

Per-sample randomness. The tracked sampler yields :class:`SampleIndex` values, ints that
also carry their epoch's stream. Inside ``__getitem__``, ``with sample_rng(index):`` (or
wrapping the dataset with :func:`seed_per_sample`) seeds Python, numpy, torch's CPU
generator and registered host generators from ``(seed, loader, epoch, index)`` and puts
their previous states back afterwards. Augmentation then no longer depends on which worker
loads a sample or how far it has got: the stream is the same for any ``num_workers``,
with or without ``persistent_workers``, and after a resume at any batch.

Switch it off with ``seed_everything(seed, workers=False)``.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import os
import weakref
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info
from torch.utils.data.distributed import DistributedSampler

from torchrepro import distributed
from torchrepro._derive import SeedLike, derive_seed, normalize_seed
from torchrepro._sources import (
    available_sources,
    capture_all,
    restore_all,
    seed_all,
    seed_generator,
)
from torchrepro.errors import SeedError, StateError

SEED_ENV = "TORCHREPRO_SEED"

WorkerInitFn = Callable[[int], None]


def current_rank() -> int:
    """This process's global rank: from torch.distributed when initialised, else ``RANK``."""
    return distributed.rank()


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


_T = TypeVar("_T")


class SampleIndex(int):
    """A dataset index that also carries the random stream of its loader and epoch.

    Tracked loaders hand these to ``__getitem__``; they behave as plain ints everywhere
    (indexing lists, tensors, arrays) and survive pickling to worker processes.
    :func:`sample_rng` reads ``stream`` to seed the sample.

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


def _current_root() -> int:
    return _config.root if _config is not None else root_seed_from_env()


def sample_seed(index: int) -> int:
    """The seed of one sample: a function of root seed, loader, epoch and ``index`` only.

    A :class:`SampleIndex` from a tracked loader brings its loader's and epoch's stream;
    a plain int (direct ``dataset[i]``, an untracked loader) is seeded from the root seed
    and the index alone, the same in every epoch.

    Raises:
        SeedError: ``index`` is negative, or no root seed is set.

    Example:
        >>> seed_everything(11)
        >>> sample_seed(3) == sample_seed(3)
        True
    """
    stream = getattr(index, "stream", None)
    if stream is None:
        stream = derive_seed(_current_root(), "sample")
    return derive_seed(stream, int(index))


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

    Example:
        >>> class Noisy(Dataset):
        ...     def __getitem__(self, index):
        ...         with torchrepro.sample_rng(index):
        ...             return torch.randn(3)
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

    Example:
        >>> loader = DataLoader(seed_per_sample(Augmented()), shuffle=True, num_workers=2)
    """
    return _PerSampleSeeded(dataset)


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
        >>> sampler.set_position(epoch=1, batch=4)
        >>> len(list(sampler))
        2
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


@dataclass
class _Position:
    epoch: int
    batch: int
    finished: bool = False


@dataclass
class _Track:
    """What the main process knows about one tracked loader's progress."""

    index: int
    root: int
    rank: int
    sampler: ResumableSampler | ResumableDistributedSampler
    generator: torch.Generator | None
    following: _Position = field(default_factory=lambda: _Position(0, 0))
    current: _Position | None = None

    def position(self) -> tuple[int, int]:
        # An iteration that yielded its last batch but has not raised StopIteration is
        # still in its epoch: a checkpoint taken inside the loop body resumes inside it.
        if self.current is not None and not self.current.finished:
            return self.current.epoch, self.current.batch
        return self.following.epoch, self.following.batch

    def begin(self) -> _Position:
        position = _Position(self.following.epoch, self.following.batch)
        if isinstance(self.sampler, ResumableDistributedSampler):
            # The epoch is the user's (set_epoch); a saved position applies to that epoch only.
            epoch = self.sampler.epoch
            if position.batch and position.epoch != epoch:
                raise StateError(
                    f"DataLoader #{self.index} was restored to epoch {position.epoch}, batch "
                    f"{position.batch}, but its DistributedSampler is at epoch {epoch}. Call "
                    f"sampler.set_epoch({position.epoch}) before iterating, as the saved run did."
                )
            position = _Position(epoch, position.batch if position.epoch == epoch else 0)
        self.following = _Position(position.epoch + 1, 0)
        self.current = position
        self.sampler.set_position(position.epoch, position.batch)
        if self.generator is not None:
            # The base seed of the epoch's workers is drawn from this generator.
            seed = derive_seed(self.root, "loader", self.rank, self.index, position.epoch)
            seed_generator(self.generator, seed)
        return position

    def move_to(self, epoch: int, batch: int) -> None:
        self.following = _Position(epoch, batch)
        self.current = None


class _TrackedIterator:
    """Wraps a DataLoader iterator to count the batches it hands to the user."""

    def __init__(self, inner: Iterator[Any], position: _Position) -> None:
        self._inner = inner
        self._position = position

    def __iter__(self) -> _TrackedIterator:
        return self

    def __next__(self) -> Any:
        try:
            item = next(self._inner)
        except StopIteration:
            self._position.finished = True
            raise
        self._position.batch += 1
        return item

    def __len__(self) -> int:
        return len(self._inner)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


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
    tracked: dict[int, weakref.ref[DataLoader[Any]]] = field(default_factory=dict)
    pending: dict[int, LoaderPosition] = field(default_factory=dict)


@dataclass(frozen=True)
class LoaderPosition:
    """Where a tracked loader's next ``iter()`` starts, with what it was checked against.

    Attributes:
        index: The loader's creation index since ``seed_everything``.
        epoch: The epoch the next ``iter()`` yields.
        batch: The first batch it yields.
        samples: The dataset's length when saved.
        batch_size: The loader's batch size when saved (0 for ``batch_size=None``).
    """

    index: int
    epoch: int
    batch: int
    samples: int
    batch_size: int


_config: _LoaderConfig | None = None
_original_init: Callable[..., None] | None = None
_original_iter: Callable[[DataLoader[Any]], Iterator[Any]] | None = None


def _trackable(arguments: dict[str, Any]) -> bool:
    dataset = arguments.get("dataset")
    return (
        arguments.get("generator") is None
        and arguments.get("batch_sampler") is None
        and not isinstance(dataset, IterableDataset)
        and hasattr(dataset, "__len__")
    )


def _seeded_init(self: DataLoader[Any], *args: Any, **kwargs: Any) -> None:
    assert _original_init is not None
    config = _config
    if config is None:
        _original_init(self, *args, **kwargs)
        return
    bound = inspect.signature(_original_init).bind(self, *args, **kwargs)
    arguments = bound.arguments
    index = config.created
    track = None
    user_sampler = arguments.get("sampler")
    batch_size = arguments.get("batch_size", 1)
    if isinstance(user_sampler, DistributedSampler) and _trackable(arguments):
        arguments["sampler"] = ResumableDistributedSampler(user_sampler, batch_size=batch_size or 1)
    elif user_sampler is None and _trackable(arguments):
        sampler = ResumableSampler(
            arguments["dataset"],
            shuffle=bool(arguments.pop("shuffle", False)),
            seed=config.root,
            key=(config.rank, index),
            batch_size=batch_size or 1,
        )
        arguments["sampler"] = sampler
    if arguments.get("generator") is None:
        generator = seed_generator(
            torch.Generator(), derive_seed(config.root, "loader", config.rank, index)
        )
        arguments["generator"] = generator
        if isinstance(arguments.get("sampler"), ResumableSampler | ResumableDistributedSampler):
            track = _Track(index, config.root, config.rank, arguments["sampler"], generator)
    arguments["worker_init_fn"] = _WorkerSeeder(
        config.root, config.rank, arguments.get("worker_init_fn")
    )
    config.created += 1
    _original_init(*bound.args, **bound.kwargs)
    if track is not None:
        self._torchrepro_track = track
        config.tracked[index] = weakref.ref(self)
        pending = config.pending.pop(index, None)
        if pending is not None:
            _move(self, track, pending)


def _tracked_iter(self: DataLoader[Any]) -> Iterator[Any]:
    assert _original_iter is not None
    track: _Track | None = self.__dict__.get("_torchrepro_track")
    if track is None:
        return _original_iter(self)
    # The sampler's position and the generator's seed must be set before the inner
    # iterator exists: it draws the workers' base seed and starts the sampler at once.
    position = track.begin()
    return _TrackedIterator(_original_iter(self), position)


def configure_loaders(root: int | None) -> None:
    """Seeds every DataLoader created from now on from ``root``; ``None`` stops it.

    Called by ``seed_everything``; installs the DataLoader hooks on first use.
    """
    global _config, _original_init, _original_iter
    _config = None if root is None else _LoaderConfig(root, current_rank())
    if root is not None and _original_init is None:
        _original_init = DataLoader.__init__
        _original_iter = DataLoader.__iter__
        DataLoader.__init__ = _seeded_init  # type: ignore[method-assign]
        DataLoader.__iter__ = _tracked_iter  # type: ignore[assignment, method-assign]


def loader_config() -> _LoaderConfig | None:
    """The current loader seeding (for isolation): root, rank, loaders created and tracked."""
    if _config is None:
        return None
    return _LoaderConfig(
        _config.root, _config.rank, _config.created, dict(_config.tracked), dict(_config.pending)
    )


def set_loader_config(config: _LoaderConfig | None) -> None:
    """Puts back a value returned by :func:`loader_config`."""
    global _config
    _config = config


# ---------------------------------------------------------------- positions, for torchrepro.state


def _live_tracked() -> dict[int, DataLoader[Any]]:
    if _config is None:
        return {}
    live = {index: ref() for index, ref in _config.tracked.items()}
    return {index: loader for index, loader in live.items() if loader is not None}


def _describe_loader(loader: DataLoader[Any]) -> tuple[int, int]:
    return len(loader.dataset), loader.batch_size or 0  # type: ignore[arg-type]


def loader_positions() -> list[LoaderPosition]:
    """The position of every live tracked loader, by creation index."""
    positions = []
    for index, loader in sorted(_live_tracked().items()):
        epoch, batch = loader._torchrepro_track.position()  # type: ignore[attr-defined]
        samples, batch_size = _describe_loader(loader)
        positions.append(LoaderPosition(index, epoch, batch, samples, batch_size))
    for position in _config.pending.values() if _config is not None else ():
        positions.append(position)
    return sorted(positions, key=lambda position: position.index)


def _check_fits(loader: DataLoader[Any], position: LoaderPosition) -> None:
    samples, batch_size = _describe_loader(loader)
    if (samples, batch_size) != (position.samples, position.batch_size):
        raise StateError(
            f"DataLoader #{position.index} has {samples} samples in batches of {batch_size}; "
            f"the checkpoint was taken with {position.samples} in batches of "
            f"{position.batch_size}. Create the loaders as the saved run did, in the same order."
        )
    if position.batch > len(loader):
        raise StateError(
            f"DataLoader #{position.index} position is batch {position.batch}; expected at "
            f"most {len(loader)} batches per epoch. The checkpoint does not belong to this loader."
        )


def check_positions(positions: list[LoaderPosition]) -> None:
    """Raises :class:`StateError` if ``positions`` cannot be applied; changes nothing."""
    if positions and _config is None:
        raise StateError(
            f"the checkpoint holds positions of {len(positions)} DataLoader(s), but loaders are "
            "not tracked in this process. Call torchrepro.seed_everything(seed) before creating "
            "the loaders (workers=True)."
        )
    live = _live_tracked()
    created = _config.created if _config is not None else 0
    for position in positions:
        loader = live.get(position.index)
        if loader is not None:
            _check_fits(loader, position)
        elif position.index < created:
            raise StateError(
                f"the checkpoint holds a position for DataLoader #{position.index}, but the "
                "loader created with that index here is not tracked (a sampler, batch_sampler "
                "or generator of its own, an IterableDataset) or no longer exists. Create the "
                "loaders as the saved run did, in the same order, and keep them alive."
            )


def _move(loader: DataLoader[Any], track: _Track, position: LoaderPosition) -> None:
    _check_fits(loader, position)
    track.move_to(position.epoch, position.batch)


def apply_positions(positions: list[LoaderPosition]) -> None:
    """Makes each tracked loader's next ``iter()`` start at its saved position.

    Loaders not created yet take their position when they are created.
    """
    assert _config is not None or not positions
    live = _live_tracked()
    for position in positions:
        loader = live.get(position.index)
        if loader is None:
            assert _config is not None
            _config.pending[position.index] = position
        else:
            _move(loader, loader._torchrepro_track, position)  # type: ignore[attr-defined]
