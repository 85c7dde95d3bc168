"""RNG states as plain data: capture, restore, save and load every random stream.

Examples:
    >>> saved = save_rng("rng.pt")          # a file torch.load(weights_only=True) reads
    >>> first = np.random.rand()
    >>> restore_rng(load_rng("rng.pt"))
    >>> np.random.rand() == first
    True
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from torchrepro import _codec, _sources
from torchrepro._codec import Plain
from torchrepro._files import PathLike
from torchrepro._sources import RegistrableGenerator, RNGSource
from torchrepro.errors import StateError
from torchrepro.state import _archive, _container
from torchrepro.state._container import SCHEMA_VERSION
from torchrepro.state._zip import RNG_STATE

RNG_FORMAT = "torchrepro.rng"


@dataclass(frozen=True, eq=False)
class RNGState:
    """The states of every random generator torchrepro tracks, as plain data.

    Attributes:
        sources: Each source's state by name (``python``, ``numpy``, ``torch``, ``cuda``,
            ``mps``, ``generator:<name>`` for registered generators).

    Examples:
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

        Examples:
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

        Examples:
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

    Examples:
        >>> state = capture_rng()
        >>> a = torch.rand(3)
        >>> restore_rng(state)
        >>> torch.equal(torch.rand(3), a)
        True
    """
    return RNGState({s.name: s.encode(s.get_state()) for s in _sources.available_sources()})


def _names(skip: Collection[str] | str) -> frozenset[str]:
    """``skip`` as exact source names: one str is one name, never its substrings."""
    names = (skip,) if isinstance(skip, str) else skip
    if not isinstance(names, Collection) or not all(isinstance(n, str) for n in names):
        raise StateError(
            f"skip must be source names (strs); got {_codec.describe_value(skip)}. Pass e.g. "
            "skip=('cuda',) or skip='generator:aug'."
        )
    return frozenset(names)


def plan_restore(state: RNGState, skip: Collection[str] | str) -> list[tuple[RNGSource, Any]]:
    """Decodes and validates every part of ``state``; applies nothing."""
    if not isinstance(state, RNGState):
        raise StateError(
            f"expected an RNGState (from capture_rng or load_rng); got "
            f"{_codec.describe_value(state)}. Pass what capture_rng() returned, or "
            "RNGState.from_state_dict(d) for a state dict."
        )
    skip = _names(skip)
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


def apply_restore(plan: list[tuple[RNGSource, Any]]) -> None:
    for source, value in plan:
        source.set_state(value)


def restore_rng(state: RNGState, *, skip: Collection[str] | str = ()) -> None:
    """Puts back a state from :func:`capture_rng`, all of it or nothing.

    Every part is checked first (its kind, its size, that it loads into a scratch
    generator, the CUDA device count); if any fails, no generator is touched.

    Args:
        state: The state to restore.
        skip: Source names to leave alone on both sides, e.g. ``("cuda",)`` to restore a
            GPU run's host state on a CPU-only machine; exact names (one str is one name).

    Raises:
        StateError: ``state`` is no RNGState, or a part does not fit this process; nothing
            was changed.

    Examples:
        >>> state = capture_rng()
        >>> first = torch.rand(3)
        >>> restore_rng(state, skip=("numpy",))
        >>> torch.equal(torch.rand(3), first)
        True
    """
    apply_restore(plan_restore(state, skip))


def save_rng(path: PathLike, state: RNGState | None = None) -> RNGState:
    """Writes an RNG state to ``path`` atomically: a crash leaves the previous file intact.

    The file is sealed like :func:`torchrepro.save_checkpoint`'s (an integrity record
    covers every byte), keeps the permissions of the file it replaces, and a stale
    temporary file an interrupted save of ``path`` left is removed.

    Args:
        path: The file to write; read it back with :func:`load_rng` or
            ``torch.load(path, weights_only=True)``.
        state: The state to save; by default, the current one (:func:`capture_rng`).

    Returns:
        The state saved.

    Raises:
        StateError: ``path`` is a directory or its directory does not exist.

    Examples:
        >>> state = save_rng("rng.pt")
        >>> load_rng("rng.pt") == state
        True
    """
    state = capture_rng() if state is None else state
    if not isinstance(state, RNGState):
        raise StateError(
            f"expected an RNGState to save (from capture_rng); got "
            f"{_codec.describe_value(state)}. Pass state=capture_rng(), or no state."
        )
    _archive.write_archive(path, state.state_dict(), RNG_STATE)
    return state


def load_rng(path: PathLike) -> RNGState:
    """Reads a state written by :func:`save_rng`, never running code from the file.

    The path must name a regular file (a directory, FIFO or device is refused before
    anything is read); its zip directory and integrity record are checked before its
    content is, and the state's own checksum after.

    Raises:
        StateError: The path is missing or not a regular file; the file is not a
            torchrepro RNG state, holds a pickle, is damaged (the message says which part),
            or has another schema version.

    Examples:
        >>> _ = save_rng("rng.pt")
        >>> first = torch.rand(3)
        >>> restore_rng(load_rng("rng.pt"))
        >>> torch.equal(torch.rand(3), first)
        True
    """
    return RNGState.from_state_dict(_archive.read_archive(path, RNG_STATE)[0])


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

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> register_generator(rng, "augment")
        'generator:augment'
    """
    if name is not None and (not isinstance(name, str) or not name):
        raise StateError(
            f"name must be a non-empty str; got {_codec.describe_value(name)}. Pass a "
            "stable name such as 'augment' (register_generator(gen, name), generator first)."
        )
    existing = _sources.registered_name(gen)
    if existing is not None and (name is None or existing == _sources.REGISTERED_PREFIX + name):
        return existing
    if name is None:  # the lowest free number: never another generator's name
        taken = set(_sources.registered_names())
        name = next(
            str(n) for n in itertools.count() if _sources.REGISTERED_PREFIX + str(n) not in taken
        )
    return _sources.register(gen, name)
