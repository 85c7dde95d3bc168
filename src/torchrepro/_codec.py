"""RNG states as plain data, and back, validated without touching a live generator.

Plain data is tensors, ints, floats, strs, lists and dicts only: what
``torch.load(..., weights_only=True)`` reads without an allow-list. Each decoder checks a
state on a scratch generator where one can be made (numpy, Python, torch's CPU generator)
and otherwise by size (device generators), so a restore can check every part before it
applies any. :mod:`torchrepro._sources` pairs each generator with its codec.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from torchrepro._derive import describe
from torchrepro.errors import StateError

Plain = dict[str, Any]
"""A source's state as plain data (tensors, ints, floats, strs, lists, dicts)."""


# ---------------------------------------------------------------- plain-data checks


def describe_value(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    return describe(value)


def bad(where: str, expected: str, got: object) -> StateError:
    return StateError(
        f"saved RNG state {where}: expected {expected}; got {describe_value(got)}. "
        "The file is damaged or was not written by torchrepro.capture_rng; "
        "restore from another checkpoint."
    )


def field(plain: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(plain, Mapping):
        raise bad(where, "a dict", plain)
    if key not in plain:
        raise bad(f"{where}.{key}", "a value", "nothing")
    value = plain[key]
    if not isinstance(value, kind) or isinstance(value, bool) and bool not in _as_tuple(kind):
        names = " or ".join(k.__name__ for k in _as_tuple(kind))
        raise bad(f"{where}.{key}", names, value)
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def check_kind(plain: Plain, kind: str, where: str) -> None:
    got = field(plain, "kind", str, where)
    if got != kind:
        raise bad(f"{where}.kind", repr(kind), got)


def byte_tensor(
    plain: Mapping[str, Any], key: str, where: str, numel: int | None = None
) -> torch.Tensor:
    tensor: torch.Tensor = field(plain, key, torch.Tensor, where)
    if tensor.dtype != torch.uint8 or tensor.dim() != 1 or tensor.device.type != "cpu":
        raise bad(f"{where}.{key}", "a 1-D uint8 CPU tensor", tensor)
    if numel is not None and tensor.numel() != numel:
        raise bad(f"{where}.{key}", f"{numel} bytes (the size of this generator's state)", tensor)
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
        f"cannot save a numpy RNG state holding {describe_value(value)}; expected str, int, "
        "float, arrays and dicts. Report this with your numpy version."
    )


def _decode_value(value: Any, where: str) -> Any:
    if isinstance(value, Mapping) and _NDARRAY in value:
        data = byte_tensor(value, _NDARRAY, where)
        dtype = field(value, "dtype", str, where)
        shape = field(value, "shape", list, where)
        if dtype not in _ARRAY_DTYPES:
            raise bad(f"{where}.dtype", f"one of {_ARRAY_DTYPES}", dtype)
        if not all(isinstance(n, int) and n >= 0 for n in shape):
            raise bad(f"{where}.shape", "a list of non-negative ints", shape)
        if math.prod(shape) * np.dtype(dtype).itemsize != data.numel():
            raise bad(f"{where}", f"{math.prod(shape)} items of {dtype}", data)
        return np.frombuffer(data.numpy().tobytes(), dtype=dtype).reshape(shape).copy()
    if isinstance(value, Mapping):
        return {key: _decode_value(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        return value
    raise bad(where, "str, int, float, array or dict", value)


def _same(left: Any, right: Any) -> bool:
    if isinstance(left, np.ndarray) or isinstance(right, np.ndarray):
        return bool(np.array_equal(np.asarray(left), np.asarray(right)))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_same(left[k], right[k]) for k in left)
    return type(left) is type(right) and bool(left == right)


def encode_numpy(kind: str) -> Callable[[Any], Plain]:
    def encode(state: Any) -> Plain:
        return {"kind": kind, "state": _encode_value(state)}

    return encode


def _check_mt19937(state: Any, where: str) -> None:
    # numpy accepts a 625-word key or pos 900 silently; refuse what it would not produce.
    inner = state.get("state") if isinstance(state, dict) else None
    key = inner.get("key") if isinstance(inner, dict) else None
    pos = inner.get("pos") if isinstance(inner, dict) else None
    if not isinstance(key, np.ndarray) or key.shape != (624,):
        raise bad(f"{where}.state.key", "624 words", key)
    if not isinstance(pos, int) or not 0 <= pos <= 624:
        raise bad(f"{where}.state.pos", "an int in [0, 624]", pos)


def decode_numpy(
    kind: str, name: Callable[[], str], load_into_scratch: Callable[[Any], Any]
) -> Callable[[Plain], Any]:
    """A decoder that checks the state on a scratch generator and reads it back."""

    def decode(plain: Plain) -> Any:
        where = f"[{kind}]"
        check_kind(plain, kind, where)
        state = _decode_value(field(plain, "state", Mapping, where), f"{where}.state")
        expected = name()
        got = state.get("bit_generator")
        if got != expected:
            raise bad(f"{where}.state.bit_generator", repr(expected), got)
        if got == "MT19937":
            _check_mt19937(state, f"{where}.state")
        try:
            read_back = load_into_scratch(state)
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as error:
            raise bad(where, f"a valid {expected} state ({error})", state) from None
        if not _same(read_back, state):
            raise bad(where, f"a {expected} state that reads back unchanged", state)
        return state

    return decode


def bit_generator_class(name: str) -> Any:
    cls = getattr(np.random, name, None)
    if not (isinstance(cls, type) and issubclass(cls, np.random.BitGenerator)):
        raise StateError(f"unknown numpy bit generator {name!r}; expected one of numpy's.")
    return cls


def random_state_into_scratch(state: Any) -> Any:
    scratch = np.random.RandomState(bit_generator_class(state["bit_generator"])())
    scratch.set_state(state)
    return scratch.get_state(legacy=False)


# ---------------------------------------------------------------- Python random as plain data


def encode_python(state: Any) -> Plain:
    version, internal, gauss_next = state
    return {
        "kind": "python.random",
        "version": version,
        "internal": torch.tensor(internal, dtype=torch.int64),
        "gauss_next": [] if gauss_next is None else [gauss_next],
    }


def decode_python(plain: Plain) -> Any:
    where = "[python.random]"
    check_kind(plain, "python.random", where)
    version = field(plain, "version", int, where)
    internal = field(plain, "internal", torch.Tensor, where)
    gauss = field(plain, "gauss_next", list, where)
    if internal.dtype != torch.int64 or internal.dim() != 1:
        raise bad(f"{where}.internal", "a 1-D int64 tensor", internal)
    if len(gauss) > 1 or not all(isinstance(g, float) for g in gauss):
        raise bad(f"{where}.gauss_next", "[] or [float]", gauss)
    state = (version, tuple(internal.tolist()), gauss[0] if gauss else None)
    try:
        random.Random().setstate(state)
    except (ValueError, TypeError, OverflowError) as error:
        raise bad(where, f"a valid random.getstate() value ({error})", state) from None
    return state


# ---------------------------------------------------------------- torch as plain data


def encode_torch(kind: str) -> Callable[[Any], Plain]:
    def encode(state: Any) -> Plain:
        return {"kind": kind, "state": state.clone()}

    return encode


def decode_torch_cpu(kind: str) -> Callable[[Plain], Any]:
    def decode(plain: Plain) -> Any:
        where = f"[{kind}]"
        check_kind(plain, kind, where)
        state = byte_tensor(plain, "state", where).clone()
        try:
            torch.Generator().set_state(state)
        except RuntimeError as error:
            raise bad(where, f"a valid CPU generator state ({error})", state) from None
        return state

    return decode


def decode_torch_sized(kind: str, live: Callable[[], torch.Tensor]) -> Callable[[Plain], Any]:
    """Device generators cannot be made as scratch copies; their size is what can be checked."""

    def decode(plain: Plain) -> Any:
        where = f"[{kind}]"
        check_kind(plain, kind, where)
        return byte_tensor(plain, "state", where, live().numel()).clone()

    return decode


def encode_cuda(states: list[torch.Tensor]) -> Plain:
    return {"kind": "torch.cuda", "states": [state.clone() for state in states]}


def decode_cuda(plain: Plain) -> Any:
    where = "[torch.cuda]"
    check_kind(plain, "torch.cuda", where)
    states = field(plain, "states", list, where)
    count = torch.cuda.device_count()
    if len(states) != count:
        raise StateError(
            f"saved CUDA RNG state is for {len(states)} device(s); this process sees {count}. "
            "Restore with the same visible devices (CUDA_VISIBLE_DEVICES), or pass "
            "skip=('cuda',) to leave the CUDA generators as they are."
        )
    sizes = [torch.cuda.get_rng_state(device).numel() for device in range(count)]
    return [
        byte_tensor({"state": state}, "state", f"{where}.states[{device}]", size).clone()
        for device, (state, size) in enumerate(zip(states, sizes, strict=True))
    ]
