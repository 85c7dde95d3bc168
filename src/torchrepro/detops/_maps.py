"""Constant per-axis maps behind the deterministic op replacements.

Pooling and interpolation act on each spatial axis independently, so each is a product of
small constant matrices, one per axis (`adaptive_avg_pool2d(x) == P_h @ x @ P_w.T`). This
module builds those matrices and index vectors on the CPU; `_axis` moves them to the
device and caches them. Nothing here depends on the rest of torchrepro.

The index arithmetic follows ATen's kernels (`AdaptivePooling.h`, `Pool.h`,
`UpSample.h`) so that the replacement computes the same function as the native op.
"""

from __future__ import annotations

import math

import torch

# Coefficient of bicubic convolution used by PyTorch (and by OpenCV, TensorFlow).
_CUBIC_A = -0.75


def adaptive_pool_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """Return the (out_size, in_size) float64 matrix of adaptive average pooling on one axis."""
    m = torch.zeros(out_size, in_size, dtype=torch.float64)
    for o in range(out_size):
        start = (o * in_size) // out_size
        end = ((o + 1) * in_size + out_size - 1) // out_size
        m[o, start:end] = 1.0 / (end - start)
    return m


def pool_output_size(in_size: int, kernel: int, stride: int, pad: int, ceil_mode: bool) -> int:
    """Output length of average pooling on one axis, as `pooling_output_shape` in ATen."""
    numerator = in_size + 2 * pad - (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1
    # With ceil_mode the last window must start inside the input or its left padding.
    if ceil_mode and (out - 1) * stride >= in_size + pad:
        out -= 1
    return out


def avg_pool_matrix(
    in_size: int,
    kernel: int,
    stride: int,
    pad: int,
    ceil_mode: bool,
    count_include_pad: bool,
    divide: bool,
) -> torch.Tensor:
    """Return the (out, in) float64 matrix of average pooling on one axis.

    The divisor of a window in N dimensions is the product of its per-axis extents (clipped
    to the padded input, or to the input when padding is not counted), so it factors into
    one matrix per axis. With `divide=False` the entries are 1 (for `divisor_override`).
    """
    out_size = pool_output_size(in_size, kernel, stride, pad, ceil_mode)
    m = torch.zeros(out_size, in_size, dtype=torch.float64)
    for o in range(out_size):
        start = o * stride - pad
        end = min(start + kernel, in_size + pad)
        padded_extent = end - start
        start, end = max(start, 0), min(end, in_size)
        if start >= end:
            continue
        extent = padded_extent if count_include_pad else end - start
        m[o, start:end] = 1.0 / extent if divide else 1.0
    return m


def _source_scale(in_size: int, out_size: int, align_corners: bool, scale: float | None) -> float:
    # area_pixel_compute_scale in ATen.
    if align_corners:
        return (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    if scale is not None and scale > 0:
        return 1.0 / scale
    return in_size / out_size


def linear_matrix(
    in_size: int, out_size: int, align_corners: bool, scale: float | None
) -> torch.Tensor:
    """Return the (out, in) float64 matrix of linear interpolation on one axis."""
    s = _source_scale(in_size, out_size, align_corners, scale)
    m = torch.zeros(out_size, in_size, dtype=torch.float64)
    for o in range(out_size):
        src = s * o if align_corners else max(s * (o + 0.5) - 0.5, 0.0)
        i0 = min(int(math.floor(src)), in_size - 1)
        lam = min(max(src - i0, 0.0), 1.0)
        i1 = i0 + 1 if i0 < in_size - 1 else i0
        m[o, i0] += 1.0 - lam
        m[o, i1] += lam
    return m


def _cubic_near(x: float) -> float:
    return ((_CUBIC_A + 2) * x - (_CUBIC_A + 3)) * x * x + 1


def _cubic_far(x: float) -> float:
    return ((_CUBIC_A * x - 5 * _CUBIC_A) * x + 8 * _CUBIC_A) * x - 4 * _CUBIC_A


def cubic_matrix(
    in_size: int, out_size: int, align_corners: bool, scale: float | None
) -> torch.Tensor:
    """Return the (out, in) float64 matrix of bicubic interpolation on one axis.

    Taps outside the input are clamped to its border, as ATen's `upsample_bicubic2d` does,
    so a border row of the matrix can add two or more taps onto one column.
    """
    s = _source_scale(in_size, out_size, align_corners, scale)
    m = torch.zeros(out_size, in_size, dtype=torch.float64)
    for o in range(out_size):
        src = s * o if align_corners else s * (o + 0.5) - 0.5
        base = int(math.floor(src))
        t = src - base
        weights = (_cubic_far(t + 1), _cubic_near(t), _cubic_near(1 - t), _cubic_far(2 - t))
        for k, w in enumerate(weights):
            m[o, min(max(base - 1 + k, 0), in_size - 1)] += w
    return m


def nearest_index(in_size: int, out_size: int, scale: float | None, exact: bool) -> torch.Tensor:
    """Return the int64 source index of each output of nearest interpolation on one axis.

    ATen computes this in float32 (`nearest_idx`, `nearest_neighbor_compute_source_index`);
    so does this function, so that floor() lands on the same side of every boundary.
    """
    if in_size == out_size and not exact:
        return torch.arange(out_size)
    if out_size == 2 * in_size and not exact:
        return torch.arange(out_size) // 2
    if scale is not None and scale > 0:
        s32 = torch.tensor(1.0 / scale, dtype=torch.float32)
    else:
        s32 = torch.tensor(float(in_size), dtype=torch.float32) / out_size
    o = torch.arange(out_size, dtype=torch.float32)
    src = torch.floor((o + 0.5) * s32) if exact else torch.floor(o * s32)
    return src.clamp(max=in_size - 1).to(torch.int64)


def reflect_index(in_size: int, left: int, right: int) -> torch.Tensor:
    """Source index of each output of reflection padding on one axis (border not repeated)."""
    if left >= in_size or right >= in_size:
        raise ValueError(
            f"reflection padding must be smaller than the input size; got padding "
            f"({left}, {right}) for size {in_size}. Use smaller padding or mode='replicate'."
        )
    i = torch.arange(-left, in_size + right)
    i = i.abs()
    return torch.where(i > in_size - 1, 2 * (in_size - 1) - i, i)


def replicate_index(in_size: int, left: int, right: int) -> torch.Tensor:
    """Source index of each output of replication padding on one axis."""
    return torch.arange(-left, in_size + right).clamp(0, in_size - 1)


def circular_index(in_size: int, left: int, right: int) -> torch.Tensor:
    """Source index of each output of circular padding on one axis."""
    if left > in_size or right > in_size:
        raise ValueError(
            f"circular padding must be at most the input size; got padding ({left}, {right}) "
            f"for size {in_size}. Use smaller padding."
        )
    return torch.arange(-left, in_size + right) % in_size
