"""The table of random number sources: one entry per generator torchrepro seeds and saves.

Seeding, isolation, per-sample seeding, capture and restore all walk this one table, so
adding a backend is adding one entry. Device entries are probed when used, never at
import, so that importing torchrepro does not initialise CUDA. Generators a user
registers (a numpy ``Generator`` held by a transform, say) are entries too.

Each entry also converts its state to and from *plain data*: tensors, ints, floats,
strs, lists and dicts only, which ``torch.load(..., weights_only=True)`` reads without an
allow-list. Decoding validates without touching the live generator (on a scratch
generator where one can be made), so a restore can check every part before applying any.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from torchrepro._derive import derive_seed, describe
from torchrepro.errors import StateError

Plain = dict[str, Any]
"""A source's state as plain data (tensors, ints, floats, strs, lists, dicts)."""


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


# ---------------------------------------------------------------- plain-data checks


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    return describe(value)


def _bad(where: str, expected: str, got: object) -> StateError:
    return StateError(
        f"saved RNG state {where}: expected {expected}; got {_describe(got)}. "
        "The file is damaged or was not written by torchrepro.capture_rng; "
        "restore from another checkpoint."
    )


def _field(plain: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(plain, Mapping):
        raise _bad(where, "a dict", plain)
    if key not in plain:
        raise _bad(f"{where}.{key}", "a value", "nothing")
    value = plain[key]
    if not isinstance(value, kind) or isinstance(value, bool) and bool not in _as_tuple(kind):
        names = " or ".join(k.__name__ for k in _as_tuple(kind))
        raise _bad(f"{where}.{key}", names, value)
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _check_kind(plain: Plain, kind: str, where: str) -> None:
    got = _field(plain, "kind", str, where)
    if got != kind:
        raise _bad(f"{where}.kind", repr(kind), got)


def _byte_tensor(
    plain: Mapping[str, Any], key: str, where: str, numel: int | None = None
) -> torch.Tensor:
    tensor: torch.Tensor = _field(plain, key, torch.Tensor, where)
    if tensor.dtype != torch.uint8 or tensor.dim() != 1 or tensor.device.type != "cpu":
        raise _bad(f"{where}.{key}", "a 1-D uint8 CPU tensor", tensor)
    if numel is not None and tensor.numel() != numel:
        raise _bad(f"{where}.{key}", f"{numel} bytes (the size of this generator's state)", tensor)
    return tensor


# ---------------------------------------------------------------- numpy states as plain data

_NDARRAY = "__ndarray__"
_ARRAY_DTYPES = ("uint8", "uint16", "uint32", "uint64", "int32", "int64")


def _encode_value(value: Any) -> Any:
    """numpy bit generator states are nested dicts of str, int, float and arrays."""
    if isinstance(value, np.ndarray):
        data = torch.frombuffer(bytearray(np.ascontiguousarray(value).tobytes()), dtype=torch.uint8)
        return {_NDARRAY: data, "dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, dict):
        return {str(key): _encode_value(item) for key, item in value.items()}
    if isinstance(value, np.integer | np.floating):
        return value.item()
    if isinstance(value, int | float | str):
        return value
    raise StateError(
        f"cannot save a numpy RNG state holding {_describe(value)}; expected str, int, "
        "float, arrays and dicts. Report this with your numpy version."
    )


def _decode_value(value: Any, where: str) -> Any:
    if isinstance(value, Mapping) and _NDARRAY in value:
        data = _byte_tensor(value, _NDARRAY, where)
        dtype = _field(value, "dtype", str, where)
        shape = _field(value, "shape", list, where)
        if dtype not in _ARRAY_DTYPES:
            raise _bad(f"{where}.dtype", f"one of {_ARRAY_DTYPES}", dtype)
        if not all(isinstance(n, int) and n >= 0 for n in shape):
            raise _bad(f"{where}.shape", "a list of non-negative ints", shape)
        if math.prod(shape) * np.dtype(dtype).itemsize != data.numel():
            raise _bad(f"{where}", f"{math.prod(shape)} items of {dtype}", data)
        return np.frombuffer(data.numpy().tobytes(), dtype=dtype).reshape(shape).copy()
    if isinstance(value, Mapping):
        return {key: _decode_value(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        return value
    raise _bad(where, "str, int, float, array or dict", value)


def _same(left: Any, right: Any) -> bool:
    if isinstance(left, np.ndarray) or isinstance(right, np.ndarray):
        return bool(np.array_equal(np.asarray(left), np.asarray(right)))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_same(left[k], right[k]) for k in left)
    return type(left) is type(right) and bool(left == right)


def _encode_numpy(kind: str) -> Callable[[Any], Plain]:
    def encode(state: Any) -> Plain:
        return {"kind": kind, "state": _encode_value(state)}

    return encode


def _check_mt19937(state: Any, where: str) -> None:
    # numpy accepts a 625-word key or pos 900 silently; refuse what it would not produce.
    inner = state.get("state") if isinstance(state, dict) else None
    key = inner.get("key") if isinstance(inner, dict) else None
    pos = inner.get("pos") if isinstance(inner, dict) else None
    if not isinstance(key, np.ndarray) or key.shape != (624,):
        raise _bad(f"{where}.state.key", "624 words", key)
    if not isinstance(pos, int) or not 0 <= pos <= 624:
        raise _bad(f"{where}.state.pos", "an int in [0, 624]", pos)


def _decode_numpy(
    kind: str, name: Callable[[], str], load_into_scratch: Callable[[Any], Any]
) -> Callable[[Plain], Any]:
    """A decoder that checks the state on a scratch generator and reads it back."""

    def decode(plain: Plain) -> Any:
        where = f"[{kind}]"
        _check_kind(plain, kind, where)
        state = _decode_value(_field(plain, "state", Mapping, where), f"{where}.state")
        expected = name()
        got = state.get("bit_generator")
        if got != expected:
            raise _bad(f"{where}.state.bit_generator", repr(expected), got)
        if got == "MT19937":
            _check_mt19937(state, f"{where}.state")
        try:
            read_back = load_into_scratch(state)
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as error:
            raise _bad(where, f"a valid {expected} state ({error})", state) from None
        if not _same(read_back, state):
            raise _bad(where, f"a {expected} state that reads back unchanged", state)
        return state

    return decode


def _bit_generator_class(name: str) -> Any:
    cls = getattr(np.random, name, None)
    if not (isinstance(cls, type) and issubclass(cls, np.random.BitGenerator)):
        raise StateError(f"unknown numpy bit generator {name!r}; expected one of numpy's.")
    return cls


def _random_state_into_scratch(state: Any) -> Any:
    scratch = np.random.RandomState(_bit_generator_class(state["bit_generator"])())
    scratch.set_state(state)
    return scratch.get_state(legacy=False)


# ---------------------------------------------------------------- Python random as plain data


def _encode_python(state: Any) -> Plain:
    version, internal, gauss_next = state
    return {
        "kind": "python.random",
        "version": version,
        "internal": torch.tensor(internal, dtype=torch.int64),
        "gauss_next": [] if gauss_next is None else [gauss_next],
    }


def _decode_python(plain: Plain) -> Any:
    where = "[python.random]"
    _check_kind(plain, "python.random", where)
    version = _field(plain, "version", int, where)
    internal = _field(plain, "internal", torch.Tensor, where)
    gauss = _field(plain, "gauss_next", list, where)
    if internal.dtype != torch.int64 or internal.dim() != 1:
        raise _bad(f"{where}.internal", "a 1-D int64 tensor", internal)
    if len(gauss) > 1 or not all(isinstance(g, float) for g in gauss):
        raise _bad(f"{where}.gauss_next", "[] or [float]", gauss)
    state = (version, tuple(internal.tolist()), gauss[0] if gauss else None)
    try:
        random.Random().setstate(state)
    except (ValueError, TypeError, OverflowError) as error:
        raise _bad(where, f"a valid random.getstate() value ({error})", state) from None
    return state


# ---------------------------------------------------------------- torch as plain data


def _encode_torch(kind: str) -> Callable[[Any], Plain]:
    def encode(state: Any) -> Plain:
        return {"kind": kind, "state": state.clone()}

    return encode


def _decode_torch_cpu(kind: str) -> Callable[[Plain], Any]:
    def decode(plain: Plain) -> Any:
        where = f"[{kind}]"
        _check_kind(plain, kind, where)
        state = _byte_tensor(plain, "state", where).clone()
        try:
            torch.Generator().set_state(state)
        except RuntimeError as error:
            raise _bad(where, f"a valid CPU generator state ({error})", state) from None
        return state

    return decode


def _decode_torch_sized(kind: str, live: Callable[[], torch.Tensor]) -> Callable[[Plain], Any]:
    """Device generators cannot be made as scratch copies; their size is what can be checked."""

    def decode(plain: Plain) -> Any:
        where = f"[{kind}]"
        _check_kind(plain, kind, where)
        return _byte_tensor(plain, "state", where, live().numel()).clone()

    return decode


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
    words = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32]).generate_state(_MT_WORDS)
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


def _encode_cuda(states: list[torch.Tensor]) -> Plain:
    return {"kind": "torch.cuda", "states": [state.clone() for state in states]}


def _decode_cuda(plain: Plain) -> Any:
    where = "[torch.cuda]"
    _check_kind(plain, "torch.cuda", where)
    states = _field(plain, "states", list, where)
    count = torch.cuda.device_count()
    if len(states) != count:
        raise StateError(
            f"saved CUDA RNG state is for {len(states)} device(s); this process sees {count}. "
            "Restore with the same visible devices (CUDA_VISIBLE_DEVICES), or pass "
            "skip=('cuda',) to leave the CUDA generators as they are."
        )
    sizes = [torch.cuda.get_rng_state(device).numel() for device in range(count)]
    return [
        _byte_tensor({"state": state}, "state", f"{where}.states[{device}]", size).clone()
        for device, (state, size) in enumerate(zip(states, sizes, strict=True))
    ]


def _single_device_source(name: str) -> RNGSource:
    """A source for a backend with one generator (MPS) or a per-process default (XPU)."""
    return RNGSource(
        name=name,
        seed_key="torch",
        available=_device_available(name),
        seed=lambda seed: _device_module(name).manual_seed(seed),
        get_state=lambda: _device_module(name).get_rng_state(),
        set_state=lambda state: _device_module(name).set_rng_state(state),
        encode=_encode_torch(f"torch.{name}"),
        decode=_decode_torch_sized(f"torch.{name}", lambda: _device_module(name).get_rng_state()),
        host=False,
    )


SOURCES: tuple[RNGSource, ...] = (
    RNGSource(
        "python", "python", _always, random.seed, random.getstate, random.setstate,
        _encode_python, _decode_python,
    ),
    RNGSource(
        "numpy",
        "numpy",
        _always,
        _seed_numpy,
        lambda: np.random.get_state(legacy=False),
        np.random.set_state,
        _encode_numpy("numpy.global"),
        _decode_numpy("numpy.global", lambda: "MT19937", _random_state_into_scratch),
    ),
    RNGSource(
        "torch", "torch", _always, _seed_torch, torch.get_rng_state, torch.set_rng_state,
        _encode_torch("torch.cpu"), _decode_torch_cpu("torch.cpu"),
    ),
    RNGSource(
        "cuda",
        "torch",
        _device_available("cuda"),
        torch.cuda.manual_seed_all,
        _cuda_state,
        _set_cuda_state,
        _encode_cuda,
        _decode_cuda,
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
        _check_kind(plain, kind, where)
        saved_device = _field(plain, "device", str, where)
        if saved_device != device:
            raise _bad(f"{where}.device", repr(device), saved_device)
        if gen.device.type == "cpu":
            return _decode_torch_cpu(kind)(plain)
        return _decode_torch_sized(kind, gen.get_state)(plain)

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
    decode = _decode_numpy(kind, lambda: str(get_state()["bit_generator"]), into_scratch)
    return RNGSource(name, name, _always, seed, get_state, set_state, _encode_numpy(kind), decode)


def _random_state_source(name: str, gen: np.random.RandomState) -> RNGSource:
    def get_state() -> Any:
        return gen.get_state(legacy=False)

    def seed(value: int) -> None:
        cls = _bit_generator_class(get_state()["bit_generator"])
        gen.set_state({**cls(value).state, "has_gauss": 0, "gauss": 0.0})

    kind = "numpy.RandomState"
    decode = _decode_numpy(
        kind, lambda: str(get_state()["bit_generator"]), _random_state_into_scratch
    )
    return RNGSource(
        name, name, _always, seed, get_state, gen.set_state, _encode_numpy(kind), decode
    )


def _python_random_source(name: str, gen: random.Random) -> RNGSource:
    return RNGSource(
        name, name, _always, gen.seed, gen.getstate, gen.setstate, _encode_python, _decode_python
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
            f"cannot register {_describe(gen)}: expected a torch.Generator, "
            "numpy.random.Generator, numpy.random.RandomState or random.Random."
        )
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
