"""Exact digests of tensors, modules, state dicts and optimizers, computed where the data lives.

A digest covers the bytes of a tensor plus its dtype and shape, so identical bytes give the
identical digest on every machine with the same device type, whatever the memory layout
(strides, channels-last, views) or the way the bytes are split into chunks.

Two algorithms, each named in every result:

* ``"xxh3_128"`` (the default for CPU tensors): xxHash's XXH3-128 over the raw bytes, streamed.
  Runs at memory speed on the host.
* ``"lanes64x2-v1"`` (the default for CUDA and any other device; also runs on CPU when asked
  for with ``algorithm="lanes"``): the bytes are viewed as 64-bit lanes; each lane is XORed
  with a key derived from its position and mixed by a splitmix64-style finalizer; two
  independent wrapping 64-bit sums (different keys, different finalizers) reduce the lanes.
  Everything is plain torch integer ops, so it runs on the tensor's own device and only the
  16-byte pair of sums per tensor travels to the host, where it is combined with dtype and
  shape. Many tensors are concatenated into one buffer per chunk, so hundreds of small
  parameters cost a few dozen kernels, not a few thousand.

Digests of different algorithms never match; compare records made with the same one.

A ``DTensor`` (FSDP2, tensor parallelism) is split over ranks, so no rank holds its bytes:
:func:`fingerprint` refuses it and says how to digest it. The recorder, the op tracer and
the replica check digest each rank's local shard (``to_local()``) instead, which needs no
collective call.

This module imports nothing of torchrepro but its errors and the lane digest (``_lanes``),
so every layer can use it.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import sys
import weakref
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Union

import torch
import xxhash

from torchrepro._lanes import finish_lanes, lane_sums
from torchrepro.errors import FingerprintError

__all__ = ["ALGORITHMS", "Digest", "fingerprint", "same_bits"]

XXH3 = "xxh3_128"
LANES = "lanes64x2-v1"
ALGORITHMS = (XXH3, LANES)
_ALIASES = {"xxh3": XXH3, XXH3: XXH3, "lanes": LANES, LANES: LANES}

# Bytes per fused buffer on the lane path: large enough that kernel launches do not dominate,
# small enough that the dozen int64 temporaries stay far below device memory.
_CHUNK_BYTES = 64 << 20
# Above this many bytes in one call, xxh3 digests run on a few threads (xxhash releases
# the GIL while it reads), as torch's own reductions do.
_THREADED_BYTES = 16 << 20
_pool: ThreadPoolExecutor | None = None


def _threads() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max(1, min(4, torch.get_num_threads())), "torchrepro-digest")
    return _pool


_XXH3_PREFIX = b"torchrepro-xxh3_128\0"
# Tensors whose memory may be read in place. A subclass (DTensor, a wrapper subclass, a
# functional or fake tensor) may have no storage of its own: it takes the copying path.
_PLAIN_TYPES = frozenset({torch.Tensor, torch.nn.Parameter})


Fingerprintable = Union[torch.Tensor, torch.nn.Module, torch.optim.Optimizer, Mapping[Any, Any]]


class Digest(str):
    """A 32-hex-character digest that also names the algorithm that made it.

    It compares and hashes as the plain hex string.

    Examples:
        >>> d = fingerprint(torch.zeros(3))
        >>> (len(d), d.algorithm)
        (32, 'xxh3_128')
    """

    algorithm: str

    def __new__(cls, hexdigest: str, algorithm: str) -> Digest:
        self = super().__new__(cls, hexdigest)
        self.algorithm = algorithm
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (Digest, (str(self), self.algorithm))


def resolve_algorithm(algorithm: str | None, devices: Iterable[torch.device]) -> str:
    """The canonical algorithm name for a request, given the devices the data lives on.

    ``None`` picks ``xxh3_128`` when every tensor is on the CPU, else ``lanes64x2-v1``
    (for every tensor, so a model split over devices still gets one algorithm).
    """
    devices = list(devices)
    if algorithm is None:
        return XXH3 if all(d.type == "cpu" for d in devices) else LANES
    name = _ALIASES.get(algorithm)
    if name is None:
        raise FingerprintError(
            f"unknown digest algorithm {algorithm!r}; expected one of {sorted(_ALIASES)}. "
            "Pass algorithm=None to pick by device."
        )
    if name == XXH3 and any(d.type != "cpu" for d in devices):
        off = sorted({str(d) for d in devices if d.type != "cpu"})
        raise FingerprintError(
            f"xxh3_128 runs on the host, but tensors live on {off}; expected CPU tensors. "
            "Use algorithm='lanes' (computed on the device), or move the tensors yourself."
        )
    return name


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    """The tensor's logical contents as a flat contiguous uint8 tensor on its own device."""
    if t.is_nested:
        raise FingerprintError(
            "cannot digest a nested tensor; expected a tensor with one shape. Digest its "
            "components instead: x.unbind()."
        )
    if t.layout != torch.strided:
        raise FingerprintError(
            f"cannot digest a tensor with layout {t.layout}; expected torch.strided. "
            "Convert it first, e.g. x.to_dense()."
        )
    if t.is_quantized:
        raise FingerprintError(
            "cannot digest a quantized tensor; expected a tensor with plain data. "
            "Digest x.int_repr() and its scale and zero point instead."
        )
    if t.device.type == "meta":
        raise FingerprintError(
            "cannot digest a meta tensor: it holds no data, only a shape; expected a tensor "
            "with data. Digest it once it is materialised (e.g. after to_empty() and "
            "loading its weights)."
        )
    t = t.detach()
    if not _storage_holds(t):
        raise FingerprintError(
            f"cannot digest a tensor of shape {tuple(t.shape)} whose storage holds "
            f"{t.untyped_storage().nbytes()} bytes, fewer than its shape needs; expected a "
            "tensor with its data in memory. Its storage was freed (FSDP frees unsharded "
            "parameters after use): digest the tensor while it holds data, or its shard."
        )
    # Lazy conjugate and negative views hold bits that differ from their values.
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    if t.is_complex():
        t = torch.view_as_real(t)
    # contiguous() gives row-major order whatever the strides, so layout never matters.
    return t.contiguous().reshape(-1).view(torch.uint8)


def _storage_holds(t: torch.Tensor) -> bool:
    """Whether a strided tensor's storage holds every byte its shape and strides reach."""
    if t.numel() == 0:
        return True
    last = t.storage_offset() + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return bool(t.untyped_storage().nbytes() >= (last + 1) * t.element_size())


def _header(t: torch.Tensor) -> bytes:
    return _header_of(t.dtype, tuple(t.shape))


@functools.lru_cache(maxsize=4096)  # a training digests the same few shapes every step
def _header_of(dtype: torch.dtype, shape: tuple[int, ...]) -> bytes:
    dims = ",".join(str(s) for s in shape)
    return f"{str(dtype).removeprefix('torch.')}\0{dims}\0".encode()


@functools.lru_cache(maxsize=4096)
def _xxh3_start(dtype: torch.dtype, shape: tuple[int, ...]) -> xxhash.xxh3_128:
    """An xxh3 state that has read the prefix and header: copied, never updated itself."""
    return xxhash.xxh3_128(_XXH3_PREFIX + _header_of(dtype, shape))


def _window(t: torch.Tensor) -> Any:
    """A zero-copy window onto a plain contiguous CPU tensor's bytes; None: copy them instead.

    The tensor stays referenced while the window is read. Complex data is already stored as
    (real, imag) pairs, as view_as_real would give. A storage too small for the shape
    (freed) gets no window: :func:`_as_bytes` refuses it, where reading it in place would
    read memory the tensor does not own.
    """
    if (
        type(t) in _PLAIN_TYPES
        and t.layout == torch.strided
        and t.is_contiguous()
        and not (t.is_conj() or t.is_neg() or t.is_quantized)
    ):
        n = t.nbytes
        if not n:
            return b""
        if t.untyped_storage().nbytes() >= t.storage_offset() * t.element_size() + n:
            return (ctypes.c_char * n).from_address(t.data_ptr())
    return None


# Parameters are digested step after step. Finding that one can be read in place takes a
# dozen calls; its window stays valid while its data pointer, shape, strides and dtype stay
# (freeing, moving or re-assigning its data changes the pointer), so it is kept, by id,
# until the parameter dies: id -> (probe, (xxh3 start, window, bytes), weak reference).
_kept_windows: dict[int, tuple[Any, tuple[Any, Any, int], Any]] = {}


def _keep_window(t: torch.Tensor, probe: Any, reader: tuple[Any, Any, int]) -> None:
    key = id(t)
    ref = weakref.ref(t, lambda _: _kept_windows.pop(key, None))
    _kept_windows[key] = (probe, reader, ref)


def _host_readers(tensors: Sequence[Any], shards: bool) -> list[tuple[Any, Any, int]] | None:
    """(xxh3 start, bytes, size) of each tensor for the xxh3 path; None if one is on a device.

    The recorder's path for parameters, microseconds each: a kept window when there is
    one, else :func:`_window`, else a contiguous copy (:func:`_as_bytes`).
    """
    readers = []
    for t in tensors:
        probe = None
        if type(t) is torch.nn.Parameter:
            probe = (t.data_ptr(), t.shape, t.stride(), t.dtype)
            kept = _kept_windows.get(id(t))
            if kept is not None and kept[0] == probe:
                readers.append(kept[1])  # the same memory read in place before: on the CPU
                continue
        elif type(t) not in _PLAIN_TYPES:
            t = _plain_tensor(t, shards)
        if not t.is_cpu:
            return None
        # A torch.Size hashes and compares as the tuple it is: no conversion per call.
        start = _xxh3_start(t.dtype, t.shape)
        window = _window(t)
        if window is None:
            data = _as_bytes(t).numpy()  # zero-copy view of the contiguous bytes
            readers.append((start, data, data.nbytes))
        else:
            reader = (start, window, len(window))
            if probe is not None:
                _keep_window(t, probe, reader)
            readers.append(reader)
    return readers


def _xxh3_hexdigests(readers: list[tuple[Any, Any, int]], chunk_bytes: int | None) -> list[str]:
    """The digests of :func:`_host_readers`' readers; on a few threads for many bytes."""
    if len(readers) > 1 and sum(size for _, _, size in readers) >= _THREADED_BYTES:
        return list(_threads().map(lambda r: _xxh3_hexdigest(r[0], r[1], chunk_bytes), readers))
    if chunk_bytes is not None:
        return [_xxh3_hexdigest(start, data, chunk_bytes) for start, data, _ in readers]
    out = []
    for start, data, _ in readers:  # the common case, without a call per tensor
        h = start.copy()
        h.update(data)
        out.append(h.hexdigest())
    return out


def _xxh3_hexdigest(start: xxhash.xxh3_128, data: Any, chunk_bytes: int | None) -> str:
    h = start.copy()
    if chunk_bytes is None:
        h.update(data)
    else:
        view = memoryview(data).cast("B")
        for offset in range(0, len(view), chunk_bytes):
            h.update(view[offset : offset + chunk_bytes])
    return h.hexdigest()


class _PendingDigests:
    """Digests of many tensors, possibly still on their devices.

    ``start_transfer()`` queues the copy of the sums to the host without waiting;
    ``resolve()`` waits for it (one transfer per device) and finishes the digests.
    """

    def __init__(self, algorithm: str, count: int) -> None:
        self.algorithm = algorithm
        self._done: list[str] = [""] * count
        self._device_parts: list[tuple[list[int], list[bytes], torch.Tensor]] = []
        self._copies: list[tuple[torch.Tensor, Any]] = []

    @classmethod
    def of(cls, algorithm: str, hexdigests: list[str]) -> _PendingDigests:
        """Digests already finished on the host."""
        done = cls(algorithm, 0)
        done._done = hexdigests
        return done

    @property
    def on_host(self) -> bool:
        """True when resolve() needs no device transfer."""
        return not self._device_parts

    def start_transfer(self) -> None:
        if self._copies or not self._device_parts:
            return
        for _, _, sums in self._device_parts:
            if sums.device.type == "cuda":
                # Lands in pinned memory; the event says when it has arrived.
                host = sums.to("cpu", non_blocking=True)
                event = torch.cuda.Event()  # type: ignore[no-untyped-call]
                # On the stream of the sums' device, which need not be the current one.
                event.record(torch.cuda.current_stream(sums.device))
                self._copies.append((host, event))
            else:
                self._copies.append((sums.cpu(), None))

    def resolve(self) -> list[Digest]:
        return [Digest(h, self.algorithm) for h in self.hexdigests()]

    def hexdigests(self) -> list[str]:
        """The digests as plain hex strings (what records store)."""
        if not self._device_parts:
            return self._done
        self.start_transfer()
        for (indices, headers, _), (host, event) in zip(self._device_parts, self._copies):
            if event is not None:
                event.synchronize()
            for i, header, (a, b) in zip(indices, headers, host.tolist()):
                self._done[i] = finish_lanes(header, a, b)
        self._device_parts, self._copies = [], []
        return self._done


def _dtensor_type() -> type | None:
    """DTensor's class once torch.distributed.tensor is imported (none can exist before)."""
    module = sys.modules.get("torch.distributed.tensor")
    found: type | None = getattr(module, "DTensor", None)
    return found


def _plain_tensor(t: Any, shards: bool) -> torch.Tensor:
    """A tensor subclass or other value to digest: a DTensor as its local shard if ``shards``."""
    if not isinstance(t, torch.Tensor):
        raise FingerprintError(
            f"expected tensors; got {type(t).__name__}. Pass torch.Tensor objects."
        )
    dtensor = _dtensor_type()
    if dtensor is not None and isinstance(t, dtensor):
        if not shards:
            raise FingerprintError(
                f"cannot digest a DTensor of shape {tuple(t.shape)}: it is split over "
                "ranks, and this rank holds only its shard; expected a plain tensor. "
                "Digest t.to_local() (this rank's shard) or t.full_tensor() (the whole "
                "tensor; every rank must call it)."
            )
        local: torch.Tensor = t.to_local()  # type: ignore[attr-defined]
        return local
    return t


def _digest_tensors(
    tensors: Sequence[torch.Tensor],
    algorithm: str | None = None,
    *,
    chunk_bytes: int = _CHUNK_BYTES,
    shards: bool = False,
) -> _PendingDigests:
    """Digest many tensors at once; the recorder's entry point.

    On the xxh3 path (every tensor on the CPU) the digests are computed on the host right
    away; on the lane path the work is fused per device and the result stays there until
    ``resolve()``. ``shards`` digests each DTensor as this rank's local shard (the
    recorder's choice); without it a DTensor is refused.
    """
    chunk = None if chunk_bytes >= _CHUNK_BYTES else chunk_bytes
    if algorithm is None or _ALIASES.get(algorithm) == XXH3:
        readers = _host_readers(tensors, shards)
        if readers is not None:
            return _PendingDigests.of(XXH3, _xxh3_hexdigests(readers, chunk))
    tensors = [t if type(t) in _PLAIN_TYPES else _plain_tensor(t, shards) for t in tensors]
    # Tensors on a device: lanes, or the error that says xxh3 runs on the host only.
    name = resolve_algorithm(algorithm, (t.device for t in tensors))
    pending = _PendingDigests(name, len(tensors))
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    for device, indices in by_device.items():
        datas = [_as_bytes(tensors[i]) for i in indices]
        headers = [_header(tensors[i]) for i in indices]
        sums = lane_sums(datas, device, chunk_bytes)
        pending._device_parts.append((indices, headers, sums))
    return pending


_MAX_DEPTH = 100
"""How deeply a state may nest (far beyond any real state dict; Python's stack is not)."""


def _flatten(
    obj: Any, prefix: str, out: list[tuple[str, Any]], inside: tuple[int, ...] = ()
) -> None:
    """Canonical (path, leaf) pairs of a nested state: dict keys sorted, sequences in order.

    ``inside`` holds the ids of the containers on the way here: a container inside itself
    and a state nested deeper than :data:`_MAX_DEPTH` are refused, not a RecursionError.
    """
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (bool, int, float, str)):
        out.append((prefix, obj))
        return
    if isinstance(obj, (Mapping, list, tuple)):
        if id(obj) in inside:
            raise FingerprintError(
                f"cannot digest a state that contains itself (at {prefix}); expected a tree "
                "of dicts and lists. Digest the tensors you care about instead."
            )
        if len(inside) >= _MAX_DEPTH:
            raise FingerprintError(
                f"cannot digest a state nested more than {_MAX_DEPTH} levels deep; expected "
                "a state dict. Digest the tensors you care about instead."
            )
        inside = (*inside, id(obj))
    if isinstance(obj, Mapping):
        # The count keeps empty mappings visible: {"a": {}} must not digest like {}.
        out.append((prefix, f"<mapping of {len(obj)}>"))
        for key in sorted(obj, key=repr):
            _flatten(obj[key], f"{prefix}[{key!r}]", out, inside)
    elif isinstance(obj, (list, tuple)):
        out.append((prefix, f"<{type(obj).__name__} of {len(obj)}>"))
        for i, item in enumerate(obj):
            _flatten(item, f"{prefix}[{i}]", out, inside)
    else:
        raise FingerprintError(
            f"cannot digest a value of type {type(obj).__name__} at {prefix or 'the top'}; "
            "expected tensors, numbers, strings, None, and dicts/lists of them. "
            "Digest the tensors you care about instead."
        )


def same_bits(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    """Whether two lists of tensors hold the same dtypes, shapes and bytes.

    Bitwise, not ``==``: ``nan == nan`` is False and ``-0.0 == 0.0`` True, both wrong here.

    Examples:
        >>> same_bits([torch.tensor([0.0])], [torch.tensor([-0.0])])
        False
    """
    return len(a) == len(b) and all(
        x.shape == y.shape
        and x.dtype == y.dtype
        and x.device == y.device
        and torch.equal(_as_bytes(x), _as_bytes(y))
        for x, y in zip(a, b)
    )


def _leaf_text(value: Any) -> str:
    if isinstance(value, float):
        return f"float:{value.hex()}"  # exact, and tells -0.0 from 0.0
    if isinstance(value, int) and value.bit_length() > 4096:  # beyond what repr may print
        return f"{type(value).__name__}:{value:#x}"
    return f"{type(value).__name__}:{value!r}"


def fingerprint(
    x: Fingerprintable,
    *,
    algorithm: str | None = None,
) -> Digest:
    """Exact 128-bit digest of a tensor, module, state dict or optimizer.

    A tensor's digest covers its bytes (in logical, row-major order), dtype and shape; it is
    sensitive to element order, the sign of zero and NaN payloads. A module is digested
    through its ``state_dict()``, an optimizer through its ``state_dict()``; a mapping
    digests every key, tensor and number in it.

    Args:
        x: What to digest.
        algorithm: ``None`` (``"xxh3_128"`` when all data is on the CPU, else
            ``"lanes64x2-v1"``), ``"xxh3"``/``"xxh3_128"``, or ``"lanes"``/``"lanes64x2-v1"``
            (the device algorithm, also on CPU, to compare CPU and CUDA runs).

    Returns:
        A :class:`Digest`: 32 hex characters, with ``.algorithm`` naming the algorithm.

    Raises:
        FingerprintError: for unsupported values, or ``xxh3`` asked for device tensors.

    Examples:
        >>> x = torch.arange(4.0)
        >>> fingerprint(x) == fingerprint(x.clone())
        True
        >>> fingerprint(x) == fingerprint(x.flip(0))
        False
    """
    if isinstance(x, torch.Tensor):
        return _digest_tensors([x], algorithm).resolve()[0]
    # A module or optimizer digests exactly like its state dict, so either can be compared.
    if isinstance(x, (torch.nn.Module, torch.optim.Optimizer)):
        state = dict(x.state_dict())
    elif isinstance(x, Mapping):
        state = dict(x)
    else:
        raise FingerprintError(
            f"cannot digest {type(x).__name__}; expected a tensor, nn.Module, optimizer or "
            "state dict."
        )
    leaves: list[tuple[str, Any]] = []
    _flatten(state, "", leaves)
    tensors = [v for _, v in leaves if isinstance(v, torch.Tensor)]
    pending = _digest_tensors(tensors, algorithm)
    digests = iter(pending.resolve())
    h = hashlib.blake2b(f"torchrepro-state\0{pending.algorithm}\0".encode(), digest_size=16)
    for path, value in leaves:
        text = f"tensor:{next(digests)}" if isinstance(value, torch.Tensor) else _leaf_text(value)
        h.update(f"{path}\0{text}\0".encode())
    return Digest(h.hexdigest(), pending.algorithm)
