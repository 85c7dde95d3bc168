"""Deterministic interpolation and padding: constant matrices, or row selection whose
gradients are summed by a one-hot matrix product."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from torchrepro.detops._axis import Size, apply_axis, index_map, matrix, select_along, spatial_sizes
from torchrepro.detops._pooling import adaptive_avg_pool_nd
from torchrepro.errors import ReplacementError

# Spatial rank of each interpolation mode; None means any rank from 1 to 3.
_INTERP_RANK: dict[str, int | None] = {
    "nearest": None,
    "nearest-exact": None,
    "area": None,
    "linear": 1,
    "bilinear": 2,
    "bicubic": 2,
    "trilinear": 3,
}


def interpolate_supported(mode: str, rank: int, antialias: bool) -> bool:
    """Whether `interpolate` has a replacement for this mode, spatial rank and antialias."""
    if antialias or mode not in _INTERP_RANK or not 1 <= rank <= 3:
        return False
    wanted = _INTERP_RANK[mode]
    return wanted is None or wanted == rank


def interpolate(
    input: torch.Tensor,
    size: Size = None,
    scale_factor: float | Sequence[float] | None = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
    recompute_scale_factor: bool | None = None,
    antialias: bool = False,
) -> torch.Tensor:
    """Deterministic `torch.nn.functional.interpolate` for nearest, nearest-exact, linear,
    bilinear, bicubic, trilinear and area modes (no antialias).

    Linear and cubic modes are products with constant per-axis matrices; nearest modes select
    rows in the forward pass and sum gradients with a one-hot matrix product.

    Examples:
        >>> interpolate(torch.tensor([[[0.0, 1.0]]]), scale_factor=2, mode="linear").tolist()
        [[[0.0, 0.25, 0.75, 1.0]]]
    """
    rank = input.dim() - 2
    if not interpolate_supported(mode, rank, antialias):
        raise ReplacementError(
            f"interpolate has no deterministic replacement for mode={mode!r}, "
            f"antialias={antialias}, input of {input.dim()} dimensions; expected antialias=False "
            f"and one of {sorted(_INTERP_RANK)} with a matching (N, C, *spatial) input."
        )
    if (size is None) == (scale_factor is None):
        raise ReplacementError(
            "interpolate needs exactly one of size and scale_factor; got "
            f"size={size!r}, scale_factor={scale_factor!r}."
        )
    in_sizes = list(input.shape[2:])
    scales: list[float | None] = [None] * rank
    if size is not None:
        out_sizes = spatial_sizes(input, size, rank, "interpolate")
    else:
        assert scale_factor is not None  # for mypy: checked just above
        factors = (
            [float(scale_factor)] * rank
            if isinstance(scale_factor, (int, float))
            else [float(f) for f in scale_factor]
        )
        if len(factors) != rank:
            raise ReplacementError(f"interpolate needs {rank} scale factors; got {scale_factor!r}.")
        # Same sizes as F.interpolate computes; the factors reach the kernel unless recomputed.
        out_sizes = [math.floor(float(n) * f) for n, f in zip(in_sizes, factors)]
        if not recompute_scale_factor:
            scales = list(factors)
    if mode == "area":
        return adaptive_avg_pool_nd(input, out_sizes, rank)
    if mode.startswith("nearest"):
        if align_corners is not None:
            raise ReplacementError(
                f"align_corners applies to linear and cubic modes only; got "
                f"align_corners={align_corners} with mode={mode!r}. Leave it None."
            )
        x = input
        for k in range(1, rank + 1):
            where = (in_sizes[-k], out_sizes[-k], scales[-k], mode == "nearest-exact")
            x = select_along(x, -k, index_map("nearest", where, x.device))
        return x
    corners = bool(align_corners)
    kind = "cubic" if mode == "bicubic" else "linear"
    x = input
    for k in range(1, rank + 1):
        args = (in_sizes[-k], out_sizes[-k], corners, scales[-k])
        x = apply_axis(x, -k, matrix(kind, args, x.dtype, x.device))
    return x


def pad(
    input: torch.Tensor, pad: Sequence[int], mode: str = "reflect", value: float | None = None
) -> torch.Tensor:
    """Deterministic `torch.nn.functional.pad` for reflect, replicate and circular modes.

    The forward pass selects rows (exact); the backward pass sums gradients with a one-hot
    matrix product instead of atomic adds.

    Examples:
        >>> pad(torch.tensor([[[1.0, 2.0, 3.0]]]), (2, 1), mode="reflect").tolist()
        [[[3.0, 2.0, 1.0, 2.0, 3.0, 2.0]]]
    """
    if mode not in ("reflect", "replicate", "circular") or value is not None:
        raise ReplacementError(
            f"pad has a deterministic replacement for reflect, replicate and circular modes "
            f"without a value; got mode={mode!r}, value={value!r}. Constant padding is "
            "deterministic already: call torch.nn.functional.pad."
        )
    if len(pad) % 2 or len(pad) // 2 > input.dim() or any(p < 0 for p in pad):
        raise ReplacementError(
            f"pad needs non-negative (left, right) pairs for at most {input.dim()} dimensions; "
            f"got {tuple(pad)}."
        )
    x = input
    for j in range(len(pad) // 2):
        axis = -1 - j
        args = (x.shape[axis], int(pad[2 * j]), int(pad[2 * j + 1]))
        try:
            index = index_map(mode, args, x.device)
        except ValueError as err:
            raise ReplacementError(str(err)) from None
        x = select_along(x, axis, index)
    return x
