"""Deterministic cumsum, bincount, histc and scatter_reduce: blocked scans of matrix
products, and stable sorts followed by log-step segmented scans; no atomics anywhere."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from torchrepro.detops._axis import matrix
from torchrepro.errors import ReplacementError

_SCAN_BLOCK = 64


def _scan_last(x: torch.Tensor) -> torch.Tensor:
    # Blocked inclusive scan: each block of _SCAN_BLOCK is a product with an upper-triangular
    # ones matrix; block totals are scanned the same way, recursively; O(n * block) work.
    n = x.shape[-1]
    if n <= _SCAN_BLOCK:
        return x @ matrix("upper", (n,), x.dtype, x.device)
    blocks = -(-n // _SCAN_BLOCK)
    padded = torch.nn.functional.pad(x, (0, blocks * _SCAN_BLOCK - n))
    local = padded.reshape(*padded.shape[:-1], blocks, _SCAN_BLOCK) @ matrix(
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

    Examples:
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

    Examples:
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

    Examples:
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

    Examples:
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
