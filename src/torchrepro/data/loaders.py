"""The DataLoader hooks, and the positions of the loaders they track.

After :func:`configure_loaders` (``seed_everything`` calls it) every DataLoader created
without a ``generator`` gets its own, seeded with ``derive_seed(seed, "loader", rank, n)``
where ``n`` counts the loaders created since, and a worker init function
(:mod:`torchrepro.data.workers`) that runs before the user's own.

A loader over a map-style dataset with no ``sampler``, ``batch_sampler`` or ``generator``
of the user's also gets a :class:`~torchrepro.data.samplers.ResumableSampler`
(``shuffle`` is honoured), and is *tracked*: the main process counts its position (epoch,
batches yielded), :func:`loader_positions` reports it and :func:`apply_positions` makes
its next ``iter()`` start there, by slicing the index list. Each tracked loader's
generator is reseeded per epoch from ``derive_seed(seed, "loader", rank, n, e)``, so
worker seeds depend on the epoch only (except with ``persistent_workers``, whose workers
are seeded once, when they start). A loader over a ``DistributedSampler`` (and no
generator or batch sampler of the user's) is tracked too: its epoch is the one the user
gave ``set_epoch``, its order stays the sampler's. Loaders with another sampler of the
user's and loaders over an ``IterableDataset`` are seeded but not tracked.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data.distributed import DistributedSampler

from torchrepro import distributed
from torchrepro._derive import derive_seed, root_seed_from_env
from torchrepro._sources import seed_generator
from torchrepro.data.samplers import ResumableDistributedSampler, ResumableSampler
from torchrepro.data.workers import _WorkerSeeder
from torchrepro.errors import StateError


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
    _config = None if root is None else _LoaderConfig(root, distributed.rank())
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


def current_root() -> int:
    """The root seed loaders are seeded from: the configured one, else ``TORCHREPRO_SEED``.

    Raises:
        SeedError: Loaders are not configured and ``TORCHREPRO_SEED`` is not set.
    """
    return _config.root if _config is not None else root_seed_from_env()


# ---------------------------------------------------------------- positions, for torchrepro.state


def _live_tracked() -> dict[int, DataLoader[Any]]:
    if _config is None:
        return {}
    live = {index: ref() for index, ref in _config.tracked.items()}
    return {index: loader for index, loader in live.items() if loader is not None}


def _describe_loader(loader: DataLoader[Any]) -> tuple[int, int]:
    return len(loader.dataset), loader.batch_size or 0  # type: ignore[arg-type]


def loader_positions() -> list[LoaderPosition]:
    """The position of every live tracked loader, by creation index.

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> torchrepro.seed_everything(11)
        11
        >>> loader = DataLoader(TensorDataset(torch.arange(8)), batch_size=2, shuffle=True)
        >>> batches = iter(loader)
        >>> _ = next(batches)
        >>> loader_positions()
        [LoaderPosition(index=0, epoch=0, batch=1, samples=8, batch_size=2)]
    """
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

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> def loader():
        ...     return DataLoader(TensorDataset(torch.arange(8)), batch_size=2, shuffle=True)
        >>> torchrepro.seed_everything(11)
        11
        >>> whole = [batch.tolist() for (batch,) in loader()]
        >>> torchrepro.seed_everything(11)
        11
        >>> apply_positions([LoaderPosition(0, epoch=0, batch=3, samples=8, batch_size=2)])
        >>> [batch.tolist() for (batch,) in loader()] == whole[3:]
        True
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
