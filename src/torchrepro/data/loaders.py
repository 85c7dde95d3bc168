"""The DataLoader hooks, and the positions of the loaders they track.

After :func:`configure_loaders` (``seed_everything`` calls it) every DataLoader created
without a ``generator`` gets its own, seeded with ``derive_seed(seed, "loader", rank, n)``
where ``n`` counts the loaders created since, and a worker init function
(:mod:`torchrepro.data.workers`) that runs before the user's own.

A loader over a map-style dataset with no ``sampler``, ``batch_sampler`` or ``generator``
of the user's also gets a resumable sampler where PyTorch would make its own (a
:class:`~torchrepro.data.samplers.ResumableRandomSampler` for ``shuffle=True``, a
``ResumableSequentialSampler`` otherwise), and is *tracked*: the main process counts its
position (epoch, batches yielded), :func:`loader_positions` reports it and
:func:`apply_positions` makes its next ``iter()`` start there, by slicing the index list.
The order of epoch ``e`` derives from ``(seed, n, e)``, the same on every rank, as the
order of ranks seeded alike is. Each tracked loader's generator is reseeded per epoch from
``derive_seed(seed, "loader", rank, n, e)``, so worker seeds depend on the epoch only
(except with ``persistent_workers``, whose workers are seeded once, when they start). A
loader over a ``DistributedSampler`` (and no generator or batch sampler of the user's) is
tracked too: its epoch is the one the user gave ``set_epoch``, its order stays the
sampler's. Loaders with another sampler of the user's and loaders over an
``IterableDataset`` are seeded but not tracked.

Frameworks re-create loaders from ``inspect.signature(DataLoader.__init__)`` and the
loader's attributes (Lightning, to insert a ``DistributedSampler``; accelerate, to shard
batches): the hooks keep PyTorch's signature (``__wrapped__``), and what torchrepro put in
a loader is recognised when it comes back as an argument: a generator torchrepro made is
not the user's (the new loader gets its own), torchrepro's worker init function is not
wrapped twice, and a wrapped ``DistributedSampler`` is unwrapped first.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)
from torch.utils.data.distributed import DistributedSampler

from torchrepro import distributed
from torchrepro._derive import derive_seed, root_seed_from_env
from torchrepro._sources import seed_generator
from torchrepro.data import batches
from torchrepro.data.samplers import (
    ResumableDistributedSampler,
    ResumableSampler,
    resumable_sampler,
)
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
    restored: bool = False  # moved to a saved position, not iterated since

    def position(self) -> tuple[int, int]:
        # An iteration that yielded its last batch but has not raised StopIteration is
        # still in its epoch: a checkpoint taken inside the loop body resumes inside it.
        if self.current is not None and not self.current.finished:
            return self.current.epoch, self.current.batch
        return self.following.epoch, self.following.batch

    def begin(self) -> _Position:
        position = _Position(self.following.epoch, self.following.batch)
        if isinstance(self.sampler, ResumableDistributedSampler):
            # The epoch is the user's (set_epoch), except on the first iteration after a
            # restore: the saved run was in the saved epoch, and a framework may set it only
            # after iter() (Lightning restarts its loader before calling set_epoch).
            if self.restored and self.sampler.epoch != position.epoch:
                self.sampler.set_epoch(position.epoch)
            epoch = self.sampler.epoch
            position = _Position(epoch, position.batch if position.epoch == epoch else 0)
        self.restored = False
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
        self.restored = True


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
_installed = False
# Every generator the hook made: one that comes back as an argument (a framework
# re-creating a loader from its attributes) is not the user's.
_made: weakref.WeakSet[torch.Generator] = weakref.WeakSet()


def _trackable(arguments: dict[str, Any]) -> bool:
    dataset = arguments.get("dataset")
    return (
        arguments.get("generator") is None
        and arguments.get("batch_sampler") is None
        and not isinstance(dataset, IterableDataset)
        and hasattr(dataset, "__len__")
    )


def _seeded_init(
    original: Callable[..., None], self: DataLoader[Any], *args: Any, **kwargs: Any
) -> None:
    config = _config
    if config is None:
        original(self, *args, **kwargs)
        return
    bound = inspect.signature(original).bind(self, *args, **kwargs)
    arguments = bound.arguments
    # A loader re-created from another's attributes brings back what this hook put in.
    if arguments.get("generator") in _made:
        del arguments["generator"]
    user_init = arguments.get("worker_init_fn")
    if isinstance(user_init, _WorkerSeeder):
        user_init = user_init.user_fn
    user_sampler = arguments.get("sampler")
    if isinstance(user_sampler, ResumableDistributedSampler):
        user_sampler = arguments["sampler"] = user_sampler.sampler
    # Read now, not at seed_everything: a framework's ranks may learn theirs in between.
    rank, index = distributed.rank(), config.created
    generator = arguments.get("generator")
    if generator is None:
        generator = seed_generator(
            torch.Generator(), derive_seed(config.root, "loader", rank, index)
        )
        _made.add(generator)
    batch_size = arguments.get("batch_size", 1) or 1
    sampler: ResumableSampler | ResumableDistributedSampler | None = None
    if isinstance(user_sampler, DistributedSampler) and _trackable(arguments):
        sampler = ResumableDistributedSampler(user_sampler, batch_size=batch_size)
    elif user_sampler is None and _trackable(arguments):
        sampler = resumable_sampler(
            arguments["dataset"],
            shuffle=bool(arguments.pop("shuffle", False)),
            seed=config.root,
            key=(index,),
            batch_size=batch_size,
            generator=generator,
        )
    if sampler is not None:
        arguments["sampler"] = sampler
    arguments["generator"] = generator
    arguments["worker_init_fn"] = _WorkerSeeder(config.root, rank, user_init)
    config.created += 1
    original(*bound.args, **bound.kwargs)
    if sampler is not None:
        _register(self, config, _Track(index, config.root, rank, sampler, generator))


def _register(loader: DataLoader[Any], config: _LoaderConfig, track: _Track) -> None:
    loader.__dict__["_torchrepro_track"] = track
    config.tracked[track.index] = weakref.ref(loader)
    pending = config.pending.pop(track.index, None)
    if pending is not None:
        _move(loader, track, pending)


def _made_by_pytorch(loader: DataLoader[Any]) -> bool:
    """Whether ``loader``'s sampling is what PyTorch makes for ``shuffle``, with nothing of
    the user's: a plain ``RandomSampler`` or ``SequentialSampler``, a plain batch sampler."""
    sampler = loader.sampler
    plain_random = (
        type(sampler) is RandomSampler
        and not sampler.replacement
        and sampler._num_samples is None
        and sampler.generator is None
    )
    return (
        (plain_random or type(sampler) is SequentialSampler)
        and loader.generator is None
        and type(loader.batch_sampler) in (BatchSampler, type(None))
        and getattr(loader.batch_sampler, "sampler", sampler) is sampler
        and _trackable({"dataset": loader.dataset})
    )


def adopt_loader(loader: DataLoader[Any]) -> bool:
    """Seeds and tracks a loader created before loaders were configured, as if created now.

    For frameworks whose users create a loader before the callback that configures
    torchrepro runs (``trainer.fit(model, DataLoader(...))``). Only a loader whose
    sampling PyTorch made (``shuffle`` and a batch size, no sampler, batch sampler or
    generator of the user's), not yet iterated, is adopted: its sampler becomes the
    resumable one, its generator and worker init function torchrepro's. Returns whether it
    was (or already is) seeded by torchrepro.

    Examples:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> configure_loaders(None)
        >>> loader = DataLoader(TensorDataset(torch.arange(8)), batch_size=2, shuffle=True)
        >>> configure_loaders(11)
        >>> adopt_loader(loader), type(loader.sampler).__name__
        (True, 'ResumableRandomSampler')
    """
    config = _config
    if isinstance(loader.worker_init_fn, _WorkerSeeder):
        return True
    if config is None or not _made_by_pytorch(loader) or loader.__dict__.get("_iterator"):
        return False
    rank, index = distributed.rank(), config.created
    generator = seed_generator(torch.Generator(), derive_seed(config.root, "loader", rank, index))
    _made.add(generator)
    sampler = resumable_sampler(
        loader.dataset,  # type: ignore[arg-type]
        shuffle=isinstance(loader.sampler, RandomSampler),
        seed=config.root,
        key=(index,),
        batch_size=loader.batch_size or 1,
        generator=generator,
    )
    # DataLoader refuses a new sampler after __init__; this is what __init__ would have set.
    object.__setattr__(loader, "sampler", sampler)
    if loader.batch_sampler is not None:
        loader.batch_sampler.sampler = sampler  # type: ignore[attr-defined]
    loader.generator = generator
    loader.worker_init_fn = _WorkerSeeder(config.root, rank, loader.worker_init_fn)
    config.created += 1
    _register(loader, config, _Track(index, config.root, rank, sampler, generator))
    return True


def _sampler_epoch(loader: DataLoader[Any]) -> int | None:
    """The ``epoch`` a framework gave a sampler of ``loader`` (``set_epoch``), if any."""
    pending = [loader.sampler, loader.batch_sampler]
    for _ in range(4):  # wrappers: a batch sampler over a shard over a sampler, ...
        found = [getattr(item, "epoch", None) for item in pending]
        epochs = [epoch for epoch in found if isinstance(epoch, int) and epoch >= 0]
        if epochs:
            return epochs[0]
        pending = [
            inner for item in pending for inner in (getattr(item, "sampler", None),
            getattr(item, "batch_sampler", None)) if inner is not None
        ]  # fmt: skip
    return None


def _tracked_iter(
    original: Callable[[DataLoader[Any]], Iterator[Any]], self: DataLoader[Any]
) -> Iterator[Any]:
    seeder = self.worker_init_fn
    if not isinstance(seeder, _WorkerSeeder):  # a loader created before seed_everything
        return original(self)
    track: _Track | None = self.__dict__.get("_torchrepro_track")
    # The sampler's position and the generator's seed must be set before the inner
    # iterator exists: it draws the workers' base seed and starts the sampler at once.
    position = track.begin() if track is not None else None
    iterations = self.__dict__.get("_torchrepro_iterations", 0)
    self.__dict__["_torchrepro_iterations"] = iterations + 1
    if position is not None:
        epoch = position.epoch
    else:
        sampler_epoch = _sampler_epoch(self)
        epoch = iterations if sampler_epoch is None else sampler_epoch
    persistent = self.persistent_workers and self.num_workers > 0
    stream = None if persistent else batches.epoch_stream(seeder.root, seeder.rank, epoch)
    if self.num_workers > 0:
        self.worker_init_fn = replace(seeder, stream=stream)  # read when the workers start
    iterator = original(self)
    fetcher = getattr(iterator, "_dataset_fetcher", None)
    if fetcher is not None:
        batches.use_in_main_process(fetcher, stream)
    return iterator if position is None else _TrackedIterator(iterator, position)


def _install() -> None:
    """Replaces DataLoader's ``__init__`` and ``__iter__`` by wrappers with their signatures."""
    original_init, original_iter = DataLoader.__init__, DataLoader.__iter__

    @functools.wraps(original_init)
    def __init__(self: DataLoader[Any], *args: Any, **kwargs: Any) -> None:
        _seeded_init(original_init, self, *args, **kwargs)

    @functools.wraps(original_iter)
    def __iter__(self: DataLoader[Any]) -> Iterator[Any]:
        return _tracked_iter(original_iter, self)

    DataLoader.__init__ = __init__  # type: ignore[method-assign]
    DataLoader.__iter__ = __iter__  # type: ignore[method-assign, assignment]
    batches.install()


def configure_loaders(root: int | None) -> None:
    """Seeds every DataLoader created from now on from ``root``; ``None`` stops it.

    Called by ``seed_everything``; installs the DataLoader hooks on first use. The hooks
    keep PyTorch's signature, for the frameworks that re-create loaders from it.

    Examples:
        >>> import inspect
        >>> from torch.utils.data import DataLoader
        >>> configure_loaders(11)
        >>> str(inspect.signature(DataLoader.__init__)).startswith("(self, dataset")
        True
    """
    global _config, _installed
    _config = None if root is None else _LoaderConfig(root)
    if root is not None and not _installed:
        _install()
        _installed = True


def loader_config() -> _LoaderConfig | None:
    """The current loader seeding (for isolation): root, loaders created and tracked."""
    if _config is None:
        return None
    return _LoaderConfig(
        _config.root, _config.created, dict(_config.tracked), dict(_config.pending)
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


def _consumed_position(track: _Track, batches: int, per_epoch: int) -> tuple[int, int]:
    if track.current is None:  # not iterated since it was created or moved
        return track.following.epoch, track.following.batch
    if batches >= per_epoch:
        return track.current.epoch + 1, 0
    return track.current.epoch, batches


def loader_positions(consumed: Mapping[DataLoader[Any], int] | None = None) -> list[LoaderPosition]:
    """The position of every live tracked loader, by creation index.

    Args:
        consumed: For a loop that fetches batches ahead of the step that uses them
            (Lightning, accelerate): per loader, the batches of its current epoch the
            training has used; the position is taken from it instead of the batches the
            loader handed out. As many as the loader's length means the epoch is done.

    Examples:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> torchrepro.seed_everything(11)
        11
        >>> loader = DataLoader(TensorDataset(torch.arange(8)), batch_size=2, shuffle=True)
        >>> batches = iter(loader)
        >>> _ = next(batches)
        >>> loader_positions()
        [LoaderPosition(index=0, epoch=0, batch=1, samples=8, batch_size=2)]
    """
    consumed = consumed or {}
    positions = []
    for index, loader in sorted(_live_tracked().items()):
        track: _Track = loader._torchrepro_track  # type: ignore[attr-defined]
        if loader in consumed:
            epoch, batch = _consumed_position(track, consumed[loader], len(loader))
        else:
            epoch, batch = track.position()
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

    Examples:
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
