"""The lane digest (``"lanes64x2-v1"``): exact digests computed on the tensor's own device.

The bytes are viewed as 64-bit lanes; each lane is XORed with a key derived from its
position and mixed by a splitmix64-style finalizer; two independent wrapping 64-bit sums
(different keys, different finalizers) reduce the lanes. Everything is plain torch integer
ops, so only the 16-byte pair of sums per tensor travels to the host
(:func:`finish_lanes`). :mod:`torchrepro.digests` is the public face.

Examples:
    >>> data = torch.arange(16, dtype=torch.uint8)
    >>> sums = lane_sums([data], data.device, 64 << 20)
    >>> finish_lanes(b"uint8\\x0016\\x00", int(sums[0, 0]), int(sums[0, 1]))
    '1a6af205fa10d398e9d5446bf379dcd9'
    >>> str(torchrepro.fingerprint(data, algorithm="lanes"))
    '1a6af205fa10d398e9d5446bf379dcd9'
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

_MASK64 = (1 << 64) - 1


def _s64(value: int) -> int:
    """An unsigned 64-bit constant as the signed int64 that has the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


# Sum A: Weyl-sequence position key (golden gamma) and the splitmix64 finalizer.
_GAMMA_A = _s64(0x9E3779B97F4A7C15)
_SEED_A = _s64(0x243F6A8885A308D3)
_MIX_A = ((30, _s64(0xBF58476D1CE4E5B9)), (27, _s64(0x94D049BB133111EB)), 31)
# Sum B: a different odd gamma and seed, and MurmurHash3's fmix64, so the two sums fail
# independently (a collision must defeat both).
_GAMMA_B = _s64(0xD1B54A32D192ED03)
_SEED_B = _s64(0x13198A2E03707344)
_MIX_B = ((33, _s64(0xFF51AFD7ED558CCD)), (33, _s64(0xC4CEB9FE1A85EC53)), 33)


def finish_lanes(t_header: bytes, a: int, b: int) -> str:
    """Combine the two device-side sums with dtype and shape, on the host (16 bytes in)."""
    payload = b"torchrepro-lanes64x2-v1\0" + t_header
    payload += (a & _MASK64).to_bytes(8, "little") + (b & _MASK64).to_bytes(8, "little")
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def _lshr(z: torch.Tensor, r: int) -> torch.Tensor:
    """Logical right shift of int64 lanes (torch's >> is arithmetic)."""
    return torch.bitwise_and(torch.bitwise_right_shift(z, r), (1 << (64 - r)) - 1)


def _fmix(z: torch.Tensor, mix: tuple[tuple[int, int], tuple[int, int], int]) -> torch.Tensor:
    (r1, m1), (r2, m2), r3 = mix
    z = z.bitwise_xor_(_lshr(z, r1)).mul_(m1)
    z = z.bitwise_xor_(_lshr(z, r2)).mul_(m2)
    return z.bitwise_xor_(_lshr(z, r3))


def _mixed_lanes(lanes: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two mixed streams for int64 lanes at int64 positions (wrapping arithmetic)."""
    za = _fmix(torch.bitwise_xor(lanes, pos * _GAMMA_A + _SEED_A), _MIX_A)
    zb = _fmix(torch.bitwise_xor(lanes, pos * _GAMMA_B + _SEED_B), _MIX_B)
    return za, zb


@dataclass
class _Piece:
    index: int  # which tensor
    data: torch.Tensor  # uint8, a slice of the tensor's bytes starting at a multiple of 8
    lane_offset: int  # position of the slice's first lane within its tensor


def lane_sums(
    datas: Sequence[torch.Tensor], device: torch.device, chunk_bytes: int
) -> torch.Tensor:
    """Per-tensor (sum A, sum B) as an int64 tensor of shape (n, 2), left on ``device``.

    Small tensors are packed together into one buffer per chunk and reduced with one
    index_add_ (integer sums are exact, so its order does not matter); large tensors are cut
    into chunks at multiples of 8 bytes, and positions stay global, so any chunking gives
    the same sums.
    """
    chunk_bytes = max(8, chunk_bytes - chunk_bytes % 8)
    acc = torch.zeros((len(datas), 2), dtype=torch.int64, device=device)
    batch: list[_Piece] = []
    batch_bytes = 0

    def flush() -> None:
        nonlocal batch, batch_bytes
        if batch:
            _reduce_pieces(batch, acc, device)
        batch, batch_bytes = [], 0

    for index, data in enumerate(datas):
        n = data.numel()
        for start in range(0, n, chunk_bytes):
            piece = _Piece(index, data[start : start + chunk_bytes], start // 8)
            if batch_bytes + piece.data.numel() > chunk_bytes:
                flush()
            batch.append(piece)
            batch_bytes += piece.data.numel() + 7
    flush()
    return acc


def _reduce_pieces(pieces: list[_Piece], acc: torch.Tensor, device: torch.device) -> None:
    if len(pieces) == 1:
        p = pieces[0]
        lanes = _lanes_of([p.data])
        pos = torch.arange(p.lane_offset, p.lane_offset + lanes.numel(), device=device)
        za, zb = _mixed_lanes(lanes, pos)
        acc[p.index, 0] += za.sum()
        acc[p.index, 1] += zb.sum()
        return
    lanes = _lanes_of([p.data for p in pieces])
    counts = [(p.data.numel() + 7) // 8 for p in pieces]
    # Each lane's position in its tensor: its index in the buffer minus a per-piece shift.
    starts = [0]
    for c in counts[:-1]:
        starts.append(starts[-1] + c)
    meta = torch.tensor(
        [[s - p.lane_offset for s, p in zip(starts, pieces)], [p.index for p in pieces], counts],
        dtype=torch.int64,
    ).to(device, non_blocking=True)
    shift = torch.repeat_interleave(meta[0], meta[2], output_size=lanes.numel())
    seg = torch.repeat_interleave(meta[1], meta[2], output_size=lanes.numel())
    pos = torch.arange(lanes.numel(), device=device) - shift
    za, zb = _mixed_lanes(lanes, pos)
    acc.index_add_(0, seg, torch.stack((za, zb), dim=1))


def _lanes_of(datas: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate byte slices, each zero-padded to a multiple of 8, and view as int64."""
    parts: list[torch.Tensor] = []
    for d in datas:
        parts.append(d)
        if d.numel() % 8:
            parts.append(torch.zeros(8 - d.numel() % 8, dtype=torch.uint8, device=d.device))
    if len(parts) == 1 and parts[0].storage_offset() % 8 == 0:
        buf = parts[0]
    else:
        buf = torch.cat(parts)
    return buf.view(torch.int64)
