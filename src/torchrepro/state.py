"""Exact resume: capture and restore every random stream and loader position, without pickle.

Everything saved here is *plain data*: tensors, ints, floats, strs, lists and dicts.
``torch.load(path, weights_only=True)`` reads it with no allow-list, so a checkpoint never
needs ``weights_only=False`` (which runs any code a tampered file holds). Every state
carries a schema version and a SHA-256 checksum of its content; a restore checks all of
it, every source included, before it applies anything.

Order at resume: ``seed_everything(seed)``, build the model, optimizer and loaders as the
saved run did, then ``load_state_dict``, then iterate. (Loaders created after
``load_state_dict`` still take their saved position; what must not happen is iterating a
loader before it.)

Example:
    >>> torchrepro.seed_everything(11)
    11
    >>> model = torch.nn.Linear(4, 2)
    >>> checkpoint = {"model": model.state_dict(), "torchrepro": torchrepro.state_dict()}
    >>> torchrepro.save_checkpoint("ckpt.pt", checkpoint)
    PosixPath('ckpt.pt')
    >>> after_save = torch.rand(3)
    >>> # ... later, in a new process, after seed_everything and creating the loaders:
    >>> checkpoint = torchrepro.load_checkpoint("ckpt.pt")
    >>> model.load_state_dict(checkpoint["model"])
    <All keys matched successfully>
    >>> torchrepro.load_state_dict(checkpoint["torchrepro"])
    >>> torch.equal(torch.rand(3), after_save)
    True
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from torchrepro import _container, _sources, data, distributed, seeding
from torchrepro._codec import Plain
from torchrepro._container import SCHEMA_VERSION
from torchrepro._files import PathLike, atomic_write_bytes
from torchrepro._sources import RegistrableGenerator, RNGSource
from torchrepro.errors import StateError

log = logging.getLogger("torchrepro")


RNG_FORMAT = "torchrepro.rng"
STATE_FORMAT = "torchrepro.state"


@dataclass(frozen=True, eq=False)
class RNGState:
    """The states of every random generator torchrepro tracks, as plain data.

    Attributes:
        sources: Each source's state by name (``python``, ``numpy``, ``torch``, ``cuda``,
            ``mps``, ``generator:<name>`` for registered generators).

    Example:
        >>> state = capture_rng()
        >>> sorted(state.sources)
        ['numpy', 'python', 'torch']
    """

    sources: Mapping[str, Plain]

    def __eq__(self, other: object) -> bool:
        """Two states are equal when their content is, tensors compared bit for bit."""
        if not isinstance(other, RNGState):
            return NotImplemented
        return _container.checksum(self.state_dict()) == _container.checksum(other.state_dict())

    __hash__ = None  # type: ignore[assignment]

    def state_dict(self) -> dict[str, Any]:
        """The state as a dict that ``torch.load(..., weights_only=True)`` reads back.

        Example:
            >>> sorted(capture_rng().state_dict())
            ['checksum', 'format', 'sources', 'version']
        """
        body = {"format": RNG_FORMAT, "version": SCHEMA_VERSION, "sources": dict(self.sources)}
        return _container.seal(body)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> RNGState:
        """Rebuilds a state from :meth:`state_dict`'s value, checking version and checksum.

        Raises:
            StateError: Another format, an unknown version, or a failed checksum.

        Example:
            >>> torch.save(capture_rng().state_dict(), "rng.pt")
            >>> state = RNGState.from_state_dict(torch.load("rng.pt", weights_only=True))
            >>> state == capture_rng()
            True
        """
        opened = _container.open_sealed(state, RNG_FORMAT)
        sources = opened.get("sources")
        if not isinstance(sources, Mapping) or not all(
            isinstance(part, Mapping) for part in sources.values()
        ):
            raise StateError(
                f"{RNG_FORMAT} state: expected 'sources' to be a dict of dicts; got "
                f"{type(sources).__name__}. The state was not written by torchrepro."
            )
        return cls({str(name): dict(part) for name, part in sources.items()})


def capture_rng() -> RNGState:
    """Captures Python, numpy, torch CPU, every device's and each registered generator's state.

    Returns:
        An :class:`RNGState`; nothing in it is shared with the live generators.

    Example:
        >>> state = capture_rng()
        >>> a = torch.rand(3)
        >>> restore_rng(state)
        >>> torch.equal(torch.rand(3), a)
        True
    """
    return RNGState({s.name: s.encode(s.get_state()) for s in _sources.available_sources()})


def _plan(state: RNGState, skip: Collection[str]) -> list[tuple[RNGSource, Any]]:
    """Decodes and validates every part of ``state``; applies nothing."""
    live = {s.name: s for s in _sources.available_sources() if s.name not in skip}
    saved = {name: part for name, part in state.sources.items() if name not in skip}
    missing = sorted(set(saved) - set(live))
    if missing:
        raise StateError(
            f"the saved RNG state has {missing}, which this process lacks (it has "
            f"{sorted(live)}). Register the same generators (register_generator) before "
            f"restoring, run on the same kind of device, or pass skip={tuple(missing)!r}."
        )
    unsaved = sorted(set(live) - set(saved))
    if unsaved:
        raise StateError(
            f"this process has RNG sources {unsaved} that the saved state lacks (it has "
            f"{sorted(saved)}); restoring would leave them unrestored. Pass "
            f"skip={tuple(unsaved)!r} to keep them as they are."
        )
    return [(live[name], live[name].decode(part)) for name, part in saved.items()]


def _apply(plan: list[tuple[RNGSource, Any]]) -> None:
    for source, value in plan:
        source.set_state(value)


def restore_rng(state: RNGState, *, skip: Collection[str] = ()) -> None:
    """Puts back a state from :func:`capture_rng`, all of it or nothing.

    Every part is checked first (its kind, its size, that it loads into a scratch
    generator, the CUDA device count); if any fails, no generator is touched.

    Args:
        state: The state to restore.
        skip: Source names to leave alone on both sides, e.g. ``("cuda",)`` to restore a
            GPU run's host state on a CPU-only machine.

    Raises:
        StateError: A part does not fit this process; nothing was changed.

    Example:
        >>> state = capture_rng()
        >>> first = torch.rand(3)
        >>> restore_rng(state, skip=("numpy",))
        >>> torch.equal(torch.rand(3), first)
        True
    """
    _apply(_plan(state, skip))


def save_rng(path: PathLike, state: RNGState | None = None) -> RNGState:
    """Writes an RNG state to ``path`` atomically: a crash leaves the previous file intact.

    Args:
        path: The file to write; read it back with :func:`load_rng` or
            ``torch.load(path, weights_only=True)``.
        state: The state to save; by default, the current one (:func:`capture_rng`).

    Returns:
        The state saved.

    Example:
        >>> state = save_rng("rng.pt")
        >>> load_rng("rng.pt") == state
        True
    """
    state = capture_rng() if state is None else state
    atomic_write_bytes(path, _container.serialize(state.state_dict()))
    return state


def load_rng(path: PathLike) -> RNGState:
    """Reads a state written by :func:`save_rng`, never running code from the file.

    Raises:
        StateError: The file is not a torchrepro RNG state, holds a pickle, is damaged,
            or has another schema version.

    Example:
        >>> _ = save_rng("rng.pt")
        >>> first = torch.rand(3)
        >>> restore_rng(load_rng("rng.pt"))
        >>> torch.equal(torch.rand(3), first)
        True
    """
    return RNGState.from_state_dict(_container.load_plain(path))


# ---------------------------------------------------------------- registered generators


def register_generator(gen: RegistrableGenerator, name: str | None = None) -> str:
    """Adds a generator of the user's to everything torchrepro seeds, captures and restores.

    For generators held by objects (an augmentation transform's ``numpy.random.Generator``,
    a ``torch.Generator`` for noise): :func:`capture_rng`, :func:`state_dict` and
    ``isolate_rng`` include it, ``seed_everything`` and DataLoader workers reseed it from
    the root seed, and :func:`torchrepro.sample_rng` seeds it per sample (host
    generators). Registration is per process: workers forked after it inherit it,
    spawned workers do not.

    Args:
        gen: A ``torch.Generator``, ``numpy.random.Generator``, ``numpy.random.RandomState``
            or ``random.Random``.
        name: Stable name under which its state is saved. Give one when the registration
            order could differ between runs; by default the registration count.

    Returns:
        The generator's source name, ``"generator:<name>"``.

    Raises:
        StateError: ``gen`` is of another type.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> register_generator(rng, "augment")
        'generator:augment'
    """
    existing = _sources.registered_name(gen)
    if existing is not None and (name is None or existing == _sources.REGISTERED_PREFIX + name):
        return existing
    if name is None:  # the lowest free number: never another generator's name
        taken = set(_sources.registered_names())
        name = next(
            str(n) for n in itertools.count() if _sources.REGISTERED_PREFIX + str(n) not in taken
        )
    return _sources.register(gen, name)


# ---------------------------------------------------------------- torchrepro.state_dict


def state_dict() -> dict[str, Any]:
    """Everything torchrepro tracks, for the user's checkpoint next to model and optimizer.

    Holds the root seed, every RNG state (registered generators included), the
    position of every tracked DataLoader (see :mod:`torchrepro.data`) and the rank layout
    (this rank, the world size, whether its streams were split), as plain data with a
    schema version and checksum. Under torchrun each rank saves its own.

    Raises:
        SeedError: No root seed was set (call ``seed_everything`` first).

    Example:
        >>> torchrepro.seed_everything(11)
        11
        >>> sorted(state_dict())
        ['checksum', 'distributed', 'format', 'loaders', 'rng', 'seed', 'version']
    """
    body = {
        "format": STATE_FORMAT,
        "version": SCHEMA_VERSION,
        "seed": seeding.root_seed(),
        "rng": capture_rng().state_dict(),
        "loaders": [asdict(position) for position in data.loader_positions()],
        "distributed": {
            "rank": distributed.rank(),
            "world_size": distributed.world_size(),
            "streams_split": int(distributed.streams_split()),
        },
    }
    return _container.seal(body)


def _layout(value: object) -> tuple[int, int, bool]:
    """(rank, world size, streams split) of a saved state; states before torchrun: (0, 1, no)."""
    if value is None:
        return 0, 1, False
    keys = ["rank", "streams_split", "world_size"]
    if (
        not isinstance(value, Mapping)
        or sorted(value) != keys
        or not all(isinstance(value[key], int) and value[key] >= 0 for key in keys)
        or value["rank"] >= value["world_size"]
        or value["streams_split"] > 1
    ):
        raise StateError(
            f"{STATE_FORMAT} state: expected 'distributed' to hold non-negative ints {keys} "
            f"with rank < world_size; got {value!r}. The state was not written by torchrepro."
        )
    return int(value["rank"]), int(value["world_size"]), bool(value["streams_split"])


def _check_layout(saved_rank: int, saved_world: int) -> None:
    here_rank, here_world = distributed.rank(), distributed.world_size()
    if saved_world != here_world:
        raise StateError(
            f"the checkpoint holds rank {saved_rank}'s state of a {saved_world}-process run; "
            f"this process is rank {here_rank} of {here_world}. Per-rank random streams and "
            "data positions belong to the world size they were saved under, so the training "
            f"would not continue as saved. Relaunch with --nproc-per-node {saved_world}, or "
            "pass reshard=True to load it anyway (see README, 'Distributed training')."
        )
    if saved_rank != here_rank:
        raise StateError(
            f"the checkpoint holds rank {saved_rank}'s state; this process is rank "
            f"{here_rank}. Loading one rank's state on another gives both the same random "
            "streams. Save torchrepro.state_dict() on every rank (e.g. to "
            f"ckpt.rank{{rank}}.pt) and load each rank's own file, or pass reshard=True."
        )


_POSITION_FIELDS = [field.name for field in fields(data.LoaderPosition)]


def _positions(value: object) -> list[data.LoaderPosition]:
    if not isinstance(value, list):
        raise StateError(f"{STATE_FORMAT} state: expected 'loaders' to be a list; got {value!r}.")
    positions = []
    for item in value:
        if (
            not isinstance(item, Mapping)
            or sorted(item) != sorted(_POSITION_FIELDS)
            or not all(isinstance(item[key], int) and item[key] >= 0 for key in item)
        ):
            raise StateError(
                f"{STATE_FORMAT} state: expected each loader position to have non-negative "
                f"ints {_POSITION_FIELDS}; got {item!r}. The state was not written by torchrepro."
            )
        positions.append(data.LoaderPosition(**{key: int(item[key]) for key in item}))
    return positions


def load_state_dict(
    state: Mapping[str, Any], *, skip: Collection[str] = (), reshard: bool = False
) -> None:
    """Puts back what :func:`state_dict` saved: RNG states and loader positions.

    Call it after ``seed_everything`` (same seed) and after creating the loaders, before
    iterating them: each tracked loader's next ``iter()`` then starts at its saved epoch
    and batch, without loading the skipped batches. Everything is checked before anything
    is applied. Under torchrun each rank loads the state it saved; whether its streams
    were split is restored too, so a DDP wrap after the load does not reseed them.

    Args:
        state: The value :func:`state_dict` returned, as loaded from a checkpoint.
        skip: RNG source names to leave alone (see :func:`restore_rng`).
        reshard: Accept a state saved under another world size or by another rank. The
            RNG states are restored as saved and each loader restarts its saved epoch at
            batch 0 (a batch position does not map onto another split of the data). The
            training goes on, but no longer as the saved run would have.

    Raises:
        StateError: The state is damaged, of another version, saved under another seed,
            by another rank or world size (without ``reshard``), or does not fit this
            process's generators or loaders; nothing was changed.

    Example:
        >>> torchrepro.seed_everything(11)
        11
        >>> saved = state_dict()
        >>> first = torch.rand(3)
        >>> load_state_dict(saved)
        >>> torch.equal(torch.rand(3), first)
        True
    """
    opened = _container.open_sealed(state, STATE_FORMAT)
    saved_seed = opened.get("seed")
    current = seeding.root_seed()
    if saved_seed != current:
        raise StateError(
            f"the checkpoint was taken under seed {saved_seed!r}; this process was seeded with "
            f"{current}. Call torchrepro.seed_everything({saved_seed!r}) before creating the "
            "loaders, then load the state."
        )
    rng = RNGState.from_state_dict(opened.get("rng"))  # type: ignore[arg-type]
    positions = _positions(opened.get("loaders"))
    saved_rank, saved_world, split = _layout(opened.get("distributed"))
    if reshard:
        positions = [replace(position, batch=0) for position in positions]
    else:
        _check_layout(saved_rank, saved_world)
    plan = _plan(rng, skip)
    data.check_positions(positions)
    _apply(plan)
    data.apply_positions(positions)
    distributed.mark_split(split)


# ---------------------------------------------------------------- whole checkpoints


def save_checkpoint(path: PathLike, checkpoint: object) -> Path:
    """``torch.save`` written atomically: a crash mid-save leaves the previous file intact.

    Put only what ``weights_only=True`` loading accepts in it (state dicts of models and
    optimizers, :func:`state_dict`, tensors, numbers, strings, lists, dicts).

    Returns:
        The path written.

    Example:
        >>> save_checkpoint("ckpt.pt", {"model": torch.nn.Linear(4, 2).state_dict(), "step": 10})
        PosixPath('ckpt.pt')
        >>> load_checkpoint("ckpt.pt")["step"]
        10
    """
    return atomic_write_bytes(path, _container.serialize(checkpoint))


def load_checkpoint(path: PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` with clear errors; never runs code from the file.

    Raises:
        StateError: The file holds a pickle of arbitrary objects, or is truncated or damaged.

    Example:
        >>> _ = save_checkpoint("ckpt.pt", {"step": 10, "weights": torch.ones(2)})
        >>> checkpoint = load_checkpoint("ckpt.pt")
    """
    return _container.load_plain(path)
