"""The table of random number sources: one entry per generator torchrepro seeds and saves.

Seeding, isolation, per-sample seeding, capture and restore all walk this one table, so
adding a backend is adding one entry. Device entries are probed when used, never at
import, so that importing torchrepro does not initialise CUDA. Generators a user
registers (a numpy ``Generator`` held by a transform, say) are entries too.

Each entry also converts its state to and from *plain data* with a codec of
:mod:`torchrepro._codec`, which validates without touching the live generator.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from torchrepro import _codec
from torchrepro._codec import Plain
from torchrepro._derive import derive_seed, seed_sequence_words
from torchrepro.errors import StateError


@dataclass(frozen=True)
class RNGSource:
    """One random number generator torchrepro controls.

    Attributes:
        name: Stable name, used in saved states and messages.
        seed_key: Key under which the source's seed is derived from the root seed.
            Sources sharing a key get the same derived seed (torch's devices share one,
            as ``torch.manual_seed`` does).
        available: Whether the source exists in this process.
        seed: Seeds the source with a 64-bit integer.
        get_state: Returns the source's state.
        set_state: Puts back a state returned by ``get_state``.
        encode: Turns a ``get_state`` value into plain data.
        decode: Turns plain data back into a ``set_state`` value, raising
            :class:`StateError` if it does not fit this source; touches nothing live.
        host: Whether the generator lives in host memory (per-sample seeding uses only
            these: reseeding a device generator per sample would synchronise the device).
    """

    name: str
    seed_key: str
    available: Callable[[], bool]
    seed: Callable[[int], None]
    get_state: Callable[[], Any]
    set_state: Callable[[Any], None]
    encode: Callable[[Any], Plain]
    decode: Callable[[Plain], Any]
    host: bool = True


def _always() -> bool:
    return True


def _seed_numpy(seed: int) -> None:
    # The legacy seeder takes 32-bit words; passing both halves keeps all 64 bits.
    np.random.seed([seed & 0xFFFFFFFF, seed >> 32])


def _device_module(name: str) -> Any:
    return getattr(torch, name, None)


def _device_available(name: str) -> Callable[[], bool]:
    def available() -> bool:
        module = _device_module(name)
        return bool(module is not None and module.is_available())

    return available


# torch's CPU generator state (Mersenne Twister, torch's legacy layout): the initial seed
# as uint64 at byte 0, then left, seeded, next, then 624 state words stored as uint64.
_MT_STATE_BYTES = 5056
_MT_WORDS_OFFSET = 24
_MT_WORDS = 624


def seed_generator(generator: torch.Generator, seed: int) -> torch.Generator:
    """Seeds a torch generator with all 64 bits of ``seed``, and returns it.

    ``manual_seed`` keeps only the low 32 bits for a CPU generator (seeds 5 and 2**32 + 5
    draw the same numbers), so two of many derived seeds sharing their low half would
    share a stream. A CPU generator's 624 Mersenne Twister words are instead filled from
    ``SeedSequence`` over the whole seed. Device generators (Philox) take 64 bits already.
    """
    generator.manual_seed(seed)
    if generator.device.type != "cpu":
        return generator
    state = generator.get_state()
    if state.numel() != _MT_STATE_BYTES or sys.byteorder != "little":
        return generator  # an unknown layout: the 32-bit seeding above stays, as torch does it
    raw = state.numpy().copy()
    words = seed_sequence_words([seed & 0xFFFFFFFF, seed >> 32], _MT_WORDS)
    end = _MT_WORDS_OFFSET + 8 * _MT_WORDS
    raw[_MT_WORDS_OFFSET:end] = words.astype("<u8").view(np.uint8)
    raw[:8] = np.array([seed], dtype="<u8").view(np.uint8)
    generator.set_state(torch.from_numpy(raw))
    return generator


def _seed_torch(seed: int) -> None:
    """Seeds torch's CPU generator from all 64 bits (see above).

    Not ``torch.manual_seed``, which also reseeds every device: the device entries of the
    table seed those, and a host-only reseed (``sample_rng``) must leave them alone.
    """
    seed_generator(torch.default_generator, seed)


def _cuda_state() -> list[torch.Tensor]:
    return list(torch.cuda.get_rng_state_all())


def _set_cuda_state(states: list[torch.Tensor]) -> None:
    torch.cuda.set_rng_state_all(states)


def _single_device_source(name: str) -> RNGSource:
    """A source for a backend with one generator (MPS) or a per-process default (XPU)."""
    return RNGSource(
        name=name,
        seed_key="torch",
        available=_device_available(name),
        seed=lambda seed: _device_module(name).manual_seed(seed),
        get_state=lambda: _device_module(name).get_rng_state(),
        set_state=lambda state: _device_module(name).set_rng_state(state),
        encode=_codec.encode_torch(f"torch.{name}"),
        decode=_codec.decode_torch_sized(
            f"torch.{name}", lambda: _device_module(name).get_rng_state()
        ),
        host=False,
    )


SOURCES: tuple[RNGSource, ...] = (
    RNGSource(
        "python", "python", _always, random.seed, random.getstate, random.setstate,
        _codec.encode_python, _codec.decode_python,
    ),
    RNGSource(
        "numpy",
        "numpy",
        _always,
        _seed_numpy,
        lambda: np.random.get_state(legacy=False),
        np.random.set_state,
        _codec.encode_numpy("numpy.global"),
        _codec.decode_numpy("numpy.global", lambda: "MT19937", _codec.random_state_into_scratch),
    ),
    RNGSource(
        "torch", "torch", _always, _seed_torch, torch.get_rng_state, torch.set_rng_state,
        _codec.encode_torch("torch.cpu"), _codec.decode_torch_cpu("torch.cpu"),
    ),
    RNGSource(
        "cuda",
        "torch",
        _device_available("cuda"),
        torch.cuda.manual_seed_all,
        _cuda_state,
        _set_cuda_state,
        _codec.encode_cuda,
        _codec.decode_cuda,
        host=False,
    ),
    _single_device_source("mps"),
    _single_device_source("xpu"),
)  # fmt: skip


# ---------------------------------------------------------------- registered generators

RegistrableGenerator = torch.Generator | np.random.Generator | np.random.RandomState | random.Random
"""The generator types :func:`register` accepts."""

REGISTERED_PREFIX = "generator:"
_registered: dict[str, tuple[object, RNGSource]] = {}


def _torch_generator_source(name: str, gen: torch.Generator) -> RNGSource:
    device = str(gen.device)
    kind = "torch.Generator"

    def decode(plain: Plain) -> Any:
        where = f"[{name}]"
        _codec.check_kind(plain, kind, where)
        saved_device = _codec.field(plain, "device", str, where)
        if saved_device != device:
            raise _codec.bad(f"{where}.device", repr(device), saved_device)
        if gen.device.type == "cpu":
            return _codec.decode_torch_cpu(kind)(plain)
        return _codec.decode_torch_sized(kind, gen.get_state)(plain)

    def encode(state: torch.Tensor) -> Plain:
        return {"kind": kind, "device": device, "state": state.clone()}

    def seed(value: int) -> None:
        seed_generator(gen, value)

    def set_state(state: torch.Tensor) -> None:
        gen.set_state(state)

    return RNGSource(
        name, name, _always, seed, gen.get_state, set_state, encode, decode,
        host=gen.device.type == "cpu",
    )  # fmt: skip


def _numpy_generator_source(name: str, gen: np.random.Generator) -> RNGSource:
    def get_state() -> Any:
        return gen.bit_generator.state

    def set_state(state: Any) -> None:
        gen.bit_generator.state = state

    def seed(value: int) -> None:
        gen.bit_generator.state = type(gen.bit_generator)(value).state

    def into_scratch(state: Any) -> Any:
        scratch = type(gen.bit_generator)()
        scratch.state = state
        return scratch.state

    kind = "numpy.Generator"
    decode = _codec.decode_numpy(kind, lambda: str(get_state()["bit_generator"]), into_scratch)
    return RNGSource(
        name, name, _always, seed, get_state, set_state, _codec.encode_numpy(kind), decode
    )


def _random_state_source(name: str, gen: np.random.RandomState) -> RNGSource:
    def get_state() -> Any:
        return gen.get_state(legacy=False)

    def seed(value: int) -> None:
        cls = _codec.bit_generator_class(get_state()["bit_generator"])
        gen.set_state({**cls(value).state, "has_gauss": 0, "gauss": 0.0})

    kind = "numpy.RandomState"
    decode = _codec.decode_numpy(
        kind, lambda: str(get_state()["bit_generator"]), _codec.random_state_into_scratch
    )
    return RNGSource(
        name, name, _always, seed, get_state, gen.set_state, _codec.encode_numpy(kind), decode
    )


def _python_random_source(name: str, gen: random.Random) -> RNGSource:
    return RNGSource(
        name,
        name,
        _always,
        gen.seed,
        gen.getstate,
        gen.setstate,
        _codec.encode_python,
        _codec.decode_python,
    )


def register(gen: object, name: str) -> str:
    """Adds ``gen`` to the table under ``generator:<name>``; returns that entry's name.

    Registering another generator under a taken name replaces it (a transform rebuilt
    with a fresh generator keeps its place in saved states).
    """
    full = REGISTERED_PREFIX + name
    source: RNGSource
    if isinstance(gen, torch.Generator):
        source = _torch_generator_source(full, gen)
    elif isinstance(gen, np.random.Generator):
        source = _numpy_generator_source(full, gen)
    elif isinstance(gen, np.random.RandomState):
        source = _random_state_source(full, gen)
    elif isinstance(gen, random.Random):
        source = _python_random_source(full, gen)
    else:
        raise StateError(
            f"cannot register {_codec.describe_value(gen)}: expected a torch.Generator, "
            "numpy.random.Generator, numpy.random.RandomState or random.Random."
        )
    try:  # a subclass that keeps no state (random.SystemRandom) cannot be put back
        source.decode(source.encode(source.get_state()))
    except Exception as error:  # noqa: BLE001 - whatever it raises, it cannot be captured
        raise StateError(
            f"cannot register {_codec.describe_value(gen)}: its state cannot be captured "
            f"and restored ({type(error).__name__}: {error}); expected a generator with a "
            "state (random.SystemRandom draws from the OS and has none). Pass a seedable "
            "generator, e.g. random.Random()."
        ) from None
    _registered[full] = (gen, source)
    return full


def unregister(name: str) -> None:
    """Removes a registered generator by its entry name (no error if absent)."""
    _registered.pop(name, None)


def registered_name(gen: object) -> str | None:
    """The entry name under which ``gen`` itself is registered, if it is."""
    return next((name for name, (held, _) in _registered.items() if held is gen), None)


def registered_names() -> list[str]:
    """The entry names of the registered generators, in registration order."""
    return list(_registered)


def all_sources() -> list[RNGSource]:
    """The built-in table followed by the registered generators."""
    return [*SOURCES, *(source for _, source in _registered.values())]


def available_sources(host_only: bool = False) -> list[RNGSource]:
    """The sources present in this process, in table order."""
    return [s for s in all_sources() if s.available() and (s.host or not host_only)]


def capture_all(sources: list[RNGSource] | None = None) -> dict[str, Any]:
    """Each available source's state, by name."""
    chosen = available_sources() if sources is None else sources
    return {source.name: source.get_state() for source in chosen}


def restore_all(states: dict[str, Any]) -> None:
    """Puts back states returned by :func:`capture_all` (sources since removed are skipped)."""
    by_name = {source.name: source for source in all_sources()}
    for name, state in states.items():
        if name in by_name:
            by_name[name].set_state(state)


def seed_all(root: int, sources: list[RNGSource] | None = None) -> dict[str, int]:
    """Seeds every available source with its own seed derived from ``root``.

    numpy, Python and torch get different seeds: seeded with the same integer, numpy's
    and torch's Mersenne Twisters emit the same stream, correlating augmentation with
    dropout.

    Returns:
        The seed given to each source, by name.
    """
    used = {}
    for source in available_sources() if sources is None else sources:
        used[source.name] = derive_seed(root, source.seed_key)
        source.seed(used[source.name])
    return used
