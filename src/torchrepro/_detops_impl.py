"""Deterministic implementations of the ops PyTorch cannot run deterministically on CUDA.

Each function here computes the same function as its native counterpart, always through
the replacement (on any device, in any mode); `detops` decides when a patched entry point
routes to it. Two kinds of primitives carry the work, both deterministic on CUDA whatever
the flags say:

* products with constant per-axis matrices (pooling, linear and cubic interpolation, the
  backward of index selection along one axis), run by cuBLAS in a fixed order;
* for segmented reductions (bincount, histc, scatter_reduce), a stable sort followed by a
  log-step segmented scan of elementwise ops; no atomics anywhere.

A product with a constant matrix also multiplies the zeros of that matrix by every input,
so an `inf` in the input spreads `nan` to its neighbours where the native kernel would not;
finite inputs give the native result up to float rounding.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Union

import torch

from torchrepro import _detops_maps as maps
from torchrepro.errors import ReplacementError

Size = Union[int, Sequence[Union[int, None]], None]

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

_SCAN_BLOCK = 64


@functools.lru_cache(maxsize=512)
def _matrix(
    kind: str, args: tuple[Any, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    # Built once per shape on the CPU in float64, cast once, and kept on the device:
    # the host-to-device copy would otherwise be paid at every step.
    builders: dict[str, Callable[..., torch.Tensor]] = {
        "adaptive": maps.adaptive_pool_matrix,
        "avg": maps.avg_pool_matrix,
        "linear": maps.linear_matrix,
        "cubic": maps.cubic_matrix,
        "upper": lambda n: torch.ones(n, n, dtype=torch.float64).triu(),
    }
    # Outside inference mode even when first asked for inside it: a cached inference
    # tensor could never be saved for a later backward pass.
    with torch.inference_mode(False):
        return builders[kind](*args).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=512)
def _index(kind: str, args: tuple[Any, ...], device: torch.device) -> torch.Tensor:
    builders: dict[str, Callable[..., torch.Tensor]] = {
        "nearest": maps.nearest_index,
        "reflect": maps.reflect_index,
        "replicate": maps.replicate_index,
        "circular": maps.circular_index,
    }
    with torch.inference_mode(False):  # as in _matrix
        return builders[kind](*args).to(device)


def _apply_axis(x: torch.Tensor, axis: int, m: torch.Tensor) -> torch.Tensor:
    """Apply the (new, old) matrix `m` along negative axis `axis` of `x`."""
    if axis == -1:
        return x @ m.T
    if axis == -2:
        return m @ x
    return (x.movedim(axis, -1) @ m.T).movedim(-1, axis)


class _SelectAlong(torch.autograd.Function):
    """`index_select` whose backward is a product with a one-hot matrix, not an atomic add."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
        ctx.axis = axis
        ctx.in_size = x.shape[axis]
        ctx.save_for_backward(index)
        return x.index_select(axis, index)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (index,) = ctx.saved_tensors
        onehot = torch.nn.functional.one_hot(index, ctx.in_size).to(grad.dtype)
        return _apply_axis(grad, ctx.axis, onehot.T), None, None


def _select_along(x: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
    return _SelectAlong.apply(x, axis, index)  # type: ignore[no-untyped-call,no-any-return]


def _spatial_sizes(x: torch.Tensor, size: Size, rank: int, what: str) -> list[int]:
    if x.dim() < rank + 1:
        raise ReplacementError(
            f"{what} needs an input with at least {rank + 1} dimensions; got shape "
            f"{tuple(x.shape)}. Pass (C, *spatial) or (N, C, *spatial)."
        )
    in_sizes = list(x.shape[-rank:])
    if size is None:
        raise ReplacementError(f"{what} needs an output size; got None.")
    items: list[int | None] = [size] * rank if isinstance(size, int) else list(size)
    if len(items) != rank:
        raise ReplacementError(
            f"{what} needs {rank} output sizes; got {size!r}. Pass an int or {rank} ints."
        )
    return [i if o is None else int(o) for i, o in zip(in_sizes, items)]


def _adaptive_avg_pool(x: torch.Tensor, output_size: Size, rank: int) -> torch.Tensor:
    sizes = _spatial_sizes(x, output_size, rank, f"adaptive_avg_pool{rank}d")
    for k in range(1, rank + 1):
        n_in, n_out = x.shape[-k], sizes[-k]
        if n_in != n_out:
            x = _apply_axis(x, -k, _matrix("adaptive", (n_in, n_out), x.dtype, x.device))
    return x


def adaptive_avg_pool1d(input: torch.Tensor, output_size: Size) -> torch.Tensor:
    """Deterministic `torch.nn.functional.adaptive_avg_pool1d` (a product with a constant matrix).

    Example:
        >>> adaptive_avg_pool1d(torch.arange(6.0).view(1, 1, 6), 3).tolist()
        [[[0.5, 2.5, 4.5]]]
    """
    return _adaptive_avg_pool(input, output_size, 1)


def adaptive_avg_pool2d(input: torch.Tensor, output_size: Size) -> torch.Tensor:
    """Deterministic `torch.nn.functional.adaptive_avg_pool2d`: `P_h @ x @ P_w.T`.

    Example:
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> adaptive_avg_pool2d(x, 2).tolist()
        [[[[2.5, 4.5], [10.5, 12.5]]]]
    """
    return _adaptive_avg_pool(input, output_size, 2)


def adaptive_avg_pool3d(input: torch.Tensor, output_size: Size) -> torch.Tensor:
    """Deterministic `torch.nn.functional.adaptive_avg_pool3d` (one matrix per axis).

    Example:
        >>> adaptive_avg_pool3d(torch.ones(1, 1, 4, 4, 4), 1).tolist()
        [[[[[1.0]]]]]
    """
    return _adaptive_avg_pool(input, output_size, 3)


def _tuple(value: int | Sequence[int], rank: int, what: str) -> list[int]:
    items = [int(value)] * rank if isinstance(value, int) else [int(v) for v in value]
    if len(items) == 1:
        items = items * rank
    if len(items) != rank:
        raise ReplacementError(f"{what} needs 1 or {rank} values; got {value!r}.")
    return items


def _avg_pool(
    x: torch.Tensor,
    rank: int,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None,
    padding: int | Sequence[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> torch.Tensor:
    kernel = _tuple(kernel_size, rank, "kernel_size")
    strides = (
        kernel if stride is None or stride == [] or stride == () else _tuple(stride, rank, "stride")
    )
    pads = _tuple(padding, rank, "padding")
    for k, p in zip(kernel, pads):
        if p > k // 2:
            raise ReplacementError(
                f"avg_pool{rank}d padding must be at most half the kernel size; got padding "
                f"{pads} for kernel {kernel}. Lower the padding."
            )
    if divisor_override is not None and divisor_override == 0:
        raise ReplacementError("avg_pool divisor_override must not be 0; got 0. Pass None.")
    divide = divisor_override is None
    for k in range(1, rank + 1):
        args = (
            x.shape[-k],
            kernel[-k],
            strides[-k],
            pads[-k],
            ceil_mode,
            count_include_pad,
            divide,
        )
        x = _apply_axis(x, -k, _matrix("avg", args, x.dtype, x.device))
    return x if divisor_override is None else x / divisor_override


def avg_pool1d(
    input: torch.Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> torch.Tensor:
    """Deterministic `torch.nn.functional.avg_pool1d`.

    Example:
        >>> avg_pool1d(torch.arange(4.0).view(1, 1, 4), 2).tolist()
        [[[0.5, 2.5]]]
    """
    return _avg_pool(input, 1, kernel_size, stride, padding, ceil_mode, count_include_pad, None)


def avg_pool2d(
    input: torch.Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> torch.Tensor:
    """Deterministic `torch.nn.functional.avg_pool2d`: the window divisor factors per axis.

    Example:
        >>> avg_pool2d(torch.ones(1, 1, 4, 4), 2, padding=1, count_include_pad=False).shape
        torch.Size([1, 1, 3, 3])
    """
    return _avg_pool(
        input, 2, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    )


def avg_pool3d(
    input: torch.Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> torch.Tensor:
    """Deterministic `torch.nn.functional.avg_pool3d`.

    Example:
        >>> avg_pool3d(torch.ones(1, 1, 4, 4, 4), 2).shape
        torch.Size([1, 1, 2, 2, 2])
    """
    return _avg_pool(
        input, 3, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    )


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

    Example:
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
        out_sizes = _spatial_sizes(input, size, rank, "interpolate")
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
        return _adaptive_avg_pool(input, out_sizes, rank)
    if mode.startswith("nearest"):
        if align_corners is not None:
            raise ReplacementError(
                f"align_corners applies to linear and cubic modes only; got "
                f"align_corners={align_corners} with mode={mode!r}. Leave it None."
            )
        x = input
        for k in range(1, rank + 1):
            where = (in_sizes[-k], out_sizes[-k], scales[-k], mode == "nearest-exact")
            x = _select_along(x, -k, _index("nearest", where, x.device))
        return x
    corners = bool(align_corners)
    kind = "cubic" if mode == "bicubic" else "linear"
    x = input
    for k in range(1, rank + 1):
        args = (in_sizes[-k], out_sizes[-k], corners, scales[-k])
        x = _apply_axis(x, -k, _matrix(kind, args, x.dtype, x.device))
    return x


def pad(
    input: torch.Tensor, pad: Sequence[int], mode: str = "reflect", value: float | None = None
) -> torch.Tensor:
    """Deterministic `torch.nn.functional.pad` for reflect, replicate and circular modes.

    The forward pass selects rows (exact); the backward pass sums gradients with a one-hot
    matrix product instead of atomic adds.

    Example:
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
            index = _index(mode, args, x.device)
        except ValueError as err:
            raise ReplacementError(str(err)) from None
        x = _select_along(x, axis, index)
    return x


def _reduction(size_average: bool | None, reduce: bool | None, reduction: str) -> str:
    if size_average is not None or reduce is not None:
        return torch.nn._reduction.legacy_get_string(size_average, reduce)
    if reduction not in ("none", "mean", "sum"):
        raise ReplacementError(f"reduction must be 'none', 'mean' or 'sum'; got {reduction!r}.")
    return reduction


def nll_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Deterministic `torch.nn.functional.nll_loss` (any number of spatial dimensions).

    Each target's log-probability is picked with a one-hot mask and an ordinary sum (exact:
    one term is not zero), so no atomic add is needed forward or backward. Like the native
    kernel it raises on a target out of range; that check reads one flag back to the host.

    Example:
        >>> logp = torch.log_softmax(torch.zeros(2, 4), 1)
        >>> round(nll_loss(logp, torch.tensor([1, 3])).item(), 4)
        1.3863
    """
    how = _reduction(size_average, reduce, reduction)
    if input.dim() == 1:
        out = nll_loss(input[None], target[None], weight, None, ignore_index, None, how)
        return out[0] if how == "none" else out
    classes = input.shape[1]
    if target.shape != input.shape[:1] + input.shape[2:]:
        raise ReplacementError(
            f"nll_loss needs a target of shape {tuple(input.shape[:1] + input.shape[2:])} for "
            f"input of shape {tuple(input.shape)}; got {tuple(target.shape)}."
        )
    valid = target != ignore_index
    if bool((valid & ((target < 0) | (target >= classes))).any()):
        raise ReplacementError(
            f"nll_loss targets must lie in [0, {classes}) or equal ignore_index={ignore_index}; "
            "got a target out of that range. Check the labels and the number of classes."
        )
    shape = (1, classes) + (1,) * (input.dim() - 2)
    mask = target.unsqueeze(1) == torch.arange(classes, device=input.device).view(shape)
    picked = torch.where(mask, input, 0).sum(1)
    if weight is None:
        w = valid.to(input.dtype)
    else:
        w = torch.where(mask, weight.to(input.dtype).view(shape), 0).sum(1) * valid
    loss = -(w * picked)
    if how == "none":
        return loss
    if how == "sum":
        return loss.sum()
    return loss.sum() / w.sum()


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Deterministic `torch.nn.functional.cross_entropy` for class-index targets.

    `log_softmax` followed by the deterministic `nll_loss`, with label smoothing computed as
    ATen's `cross_entropy_loss_label_smoothing` does.

    Example:
        >>> round(cross_entropy(torch.zeros(2, 4), torch.tensor([1, 3])).item(), 4)
        1.3863
    """
    if target.is_floating_point():
        raise ReplacementError(
            "cross_entropy's replacement takes class-index targets; got floating-point "
            "(probability) targets, which are deterministic already: call "
            "torch.nn.functional.cross_entropy."
        )
    how = _reduction(size_average, reduce, reduction)
    class_dim = 0 if input.dim() == 1 else 1
    logp = torch.log_softmax(input, class_dim)
    nll = nll_loss(logp, target, weight, None, ignore_index, None, how)
    if label_smoothing <= 0.0:
        return nll
    classes = input.shape[class_dim]
    if weight is not None:
        shape = [1] * input.dim()
        shape[class_dim] = classes
        smooth = -(logp * weight.to(logp.dtype).view(shape)).sum(class_dim)
    else:
        smooth = -logp.sum(class_dim)
    ignored = target == ignore_index
    smooth = smooth.masked_fill(ignored, 0.0)
    if how == "sum":
        smooth = smooth.sum()
    elif how == "mean":
        if weight is not None:
            kept = target.masked_select(~ignored).flatten()
            smooth = smooth.sum() / weight.to(logp.dtype).index_select(0, kept).sum()
        else:
            smooth = smooth.sum() / (~ignored).sum()
    return (1 - label_smoothing) * nll + smooth * (label_smoothing / classes)


def _scan_last(x: torch.Tensor) -> torch.Tensor:
    # Blocked inclusive scan: each block of _SCAN_BLOCK is a product with an upper-triangular
    # ones matrix; block totals are scanned the same way, recursively; O(n * block) work.
    n = x.shape[-1]
    if n <= _SCAN_BLOCK:
        return x @ _matrix("upper", (n,), x.dtype, x.device)
    blocks = -(-n // _SCAN_BLOCK)
    padded = torch.nn.functional.pad(x, (0, blocks * _SCAN_BLOCK - n))
    local = padded.reshape(*padded.shape[:-1], blocks, _SCAN_BLOCK) @ _matrix(
        "upper", (_SCAN_BLOCK,), x.dtype, x.device
    )
    before = _scan_last(local[..., -1])[..., :-1]
    offsets = torch.nn.functional.pad(before, (1, 0))
    scanned: torch.Tensor = (local + offsets.unsqueeze(-1)).flatten(-2)
    return scanned[..., :n]


def cumsum(input: torch.Tensor, dim: int, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Deterministic `torch.cumsum` for floating-point and complex tensors.

    A blocked scan of matrix products; the sums are grouped differently from the native
    sequential scan, so results agree up to float rounding.

    Example:
        >>> cumsum(torch.tensor([1.0, 2.0, 3.0]), 0).tolist()
        [1.0, 3.0, 6.0]
    """
    x = input if dtype is None else input.to(dtype)
    if not (x.is_floating_point() or x.is_complex()):
        raise ReplacementError(
            f"cumsum's replacement is for floating-point and complex tensors; got {x.dtype}. "
            "Integer cumsum is exact and deterministic already: call torch.cumsum."
        )
    if x.dim() == 0:
        return x.clone()
    return _scan_last(x.movedim(dim, -1)).movedim(-1, dim)


def _segments(
    values: torch.Tensor,
    keys: torch.Tensor,
    op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reduce `values` by equal `keys` with `op`; return (unique keys, totals, counts).

    Stable sort, then a segmented Hillis-Steele scan: at step s, element i absorbs element
    i - s when both carry the same key. Every combination happens in a fixed order, so the
    result is bitwise repeatable on any device.
    """
    sorted_keys, order = torch.sort(keys, stable=True)
    v = values.index_select(0, order)
    unique, counts = torch.unique_consecutive(sorted_keys, return_counts=True)
    longest = int(counts.max()) if counts.numel() else 0
    step = 1
    while step < longest:
        same = sorted_keys[step:] == sorted_keys[:-step]
        v = torch.cat([v[:step], torch.where(same, op(v[:-step], v[step:]), v[step:])])
        step *= 2
    ends = torch.cumsum(counts, 0) - 1  # integer cumsum: exact, never routed
    return unique, v.index_select(0, ends), counts


def bincount(
    input: torch.Tensor, weights: torch.Tensor | None = None, minlength: int = 0
) -> torch.Tensor:
    """Deterministic `torch.bincount`, with or without weights.

    Example:
        >>> bincount(torch.tensor([0, 2, 2]), torch.tensor([0.5, 1.0, 2.0])).tolist()
        [0.5, 0.0, 3.0]
    """
    if input.dim() != 1 or input.is_floating_point() or input.is_complex():
        raise ReplacementError(
            f"bincount needs a 1-D tensor of non-negative integers; got {input.dim()}-D "
            f"{input.dtype}."
        )
    if input.numel() and int(input.min()) < 0:
        raise ReplacementError(
            f"bincount needs non-negative integers; got minimum {int(input.min())}."
        )
    bins = max(int(input.max()) + 1 if input.numel() else 0, int(minlength))
    keys = input.to(torch.int64)
    if weights is None:
        edges = torch.searchsorted(
            torch.sort(keys).values, torch.arange(bins + 1, device=keys.device)
        )
        return edges[1:] - edges[:-1]
    if weights.shape != input.shape:
        raise ReplacementError(
            f"bincount needs weights of the input's shape {tuple(input.shape)}; got "
            f"{tuple(weights.shape)}."
        )
    dtype = weights.dtype if weights.dtype in (torch.float32, torch.float64) else torch.float64
    unique, totals, _ = _segments(weights.to(dtype), keys, torch.add)
    out = torch.zeros(bins, dtype=dtype, device=input.device)
    return out.index_put((unique,), totals)


def histc(input: torch.Tensor, bins: int = 100, min: float = 0, max: float = 0) -> torch.Tensor:
    """Deterministic `torch.histc`: bin indices as ATen computes them, counted after a sort.

    Example:
        >>> histc(torch.tensor([1.0, 2.0, 1.0]), bins=4, min=0, max=3).tolist()
        [0.0, 2.0, 1.0, 0.0]
    """
    if not input.is_floating_point():
        raise ReplacementError(f"histc needs a floating-point tensor; got {input.dtype}.")
    if bins <= 0:
        raise ReplacementError(f"histc needs bins > 0; got {bins}.")
    lo, hi = float(min), float(max)
    x = input.flatten()
    if lo == hi and x.numel():
        lo, hi = float(x.min()), float(x.max())
    if lo == hi:
        lo, hi = lo - 1, hi + 1
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ReplacementError(f"histc needs a finite range with min <= max; got [{lo}, {hi}].")
    left = torch.tensor(lo, dtype=input.dtype, device=input.device)
    right = torch.tensor(hi, dtype=input.dtype, device=input.device)
    kept = x[(x >= left) & (x <= right)]
    pos = ((kept - left) * bins / (right - left)).to(torch.int64).clamp(max=bins - 1)
    edges = torch.searchsorted(torch.sort(pos).values, torch.arange(bins + 1, device=input.device))
    return (edges[1:] - edges[:-1]).to(input.dtype)


_SCATTER_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "sum": torch.add,
    "mean": torch.add,
    "prod": torch.mul,
}


def scatter_reduce(
    input: torch.Tensor,
    dim: int,
    index: torch.Tensor,
    src: torch.Tensor,
    reduce: str,
    *,
    include_self: bool = True,
) -> torch.Tensor:
    """Deterministic `torch.scatter_reduce` for reduce='sum', 'mean' and 'prod'.

    Elements are grouped by their target with a stable sort and combined by a segmented
    scan; gradients flow through the same ops. ('amax' and 'amin' are deterministic in
    PyTorch already.)

    Example:
        >>> x = torch.ones(3)
        >>> scatter_reduce(x, 0, torch.tensor([0, 0, 2]), torch.tensor([2.0, 3.0, 4.0]), "prod")
        tensor([6., 1., 4.])
    """
    if reduce not in _SCATTER_OPS:
        raise ReplacementError(
            f"scatter_reduce's replacement supports reduce='sum', 'mean' or 'prod'; got "
            f"{reduce!r}. 'amax' and 'amin' are deterministic already: call "
            "torch.Tensor.scatter_reduce."
        )
    if reduce == "mean" and not (input.is_floating_point() or input.is_complex()):
        raise ReplacementError(
            f"scatter_reduce's replacement computes 'mean' for floating-point tensors; got "
            f"{input.dtype}. Use a floating-point tensor or torch.Tensor.scatter_reduce."
        )
    if src.dtype != input.dtype or index.dim() != input.dim() or src.dim() != input.dim():
        raise ReplacementError(
            f"scatter_reduce needs src of the input's dtype and index, src, input of one rank; "
            f"got input {input.dtype} {input.dim()}-D, src {src.dtype} {src.dim()}-D, index "
            f"{index.dim()}-D."
        )
    if input.dim() == 0 or index.numel() == 0:
        return input.clone()
    dim = dim % input.dim()
    n = input.shape[dim]
    if bool(((index < 0) | (index >= n)).any()):
        raise ReplacementError(
            f"scatter_reduce index values must lie in [0, {n}) along dim {dim}; got one outside."
        )
    used = src[tuple(slice(0, s) for s in index.shape)]
    # Flat position in `input` that each used element of src lands on.
    strides = torch.tensor(
        [math.prod(input.shape[a + 1 :]) for a in range(input.dim())], dtype=torch.int64
    )
    flat = torch.zeros(index.shape, dtype=torch.int64, device=input.device)
    for a in range(input.dim()):
        if a == dim:
            coord = index.to(torch.int64)
        else:
            view = [1] * input.dim()
            view[a] = index.shape[a]
            coord = torch.arange(index.shape[a], device=input.device).view(view)
        flat = flat + coord * int(strides[a])
    unique, totals, counts = _segments(used.flatten(), flat.flatten(), _SCATTER_OPS[reduce])
    base = input.flatten()
    current = base.index_select(0, unique)
    if reduce == "sum":
        new = current + totals if include_self else totals
    elif reduce == "prod":
        new = current * totals if include_self else totals
    else:
        new = (current + totals) / (counts + 1) if include_self else totals / counts
    return base.index_put((unique,), new.to(input.dtype)).view(input.shape)
