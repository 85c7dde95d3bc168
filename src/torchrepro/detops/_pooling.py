"""Deterministic adaptive and plain average pooling: products with constant matrices."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from torchrepro.detops._axis import Size, apply_axis, matrix, spatial_sizes
from torchrepro.errors import ReplacementError


def adaptive_avg_pool_nd(x: torch.Tensor, output_size: Size, rank: int) -> torch.Tensor:
    """Adaptive average pooling over the last `rank` axes (also interpolate's "area" mode).

    Examples:
        >>> adaptive_avg_pool_nd(torch.arange(4.0).view(1, 1, 4), 2, 1).tolist()
        [[[0.5, 2.5]]]
    """
    sizes = spatial_sizes(x, output_size, rank, f"adaptive_avg_pool{rank}d")
    for k in range(1, rank + 1):
        n_in, n_out = x.shape[-k], sizes[-k]
        if n_in != n_out:
            x = apply_axis(x, -k, matrix("adaptive", (n_in, n_out), x.dtype, x.device))
    return x


def adaptive_avg_pool1d(input: torch.Tensor, output_size: Size) -> torch.Tensor:
    """Deterministic `torch.nn.functional.adaptive_avg_pool1d` (a product with a constant matrix).

    Examples:
        >>> adaptive_avg_pool1d(torch.arange(6.0).view(1, 1, 6), 3).tolist()
        [[[0.5, 2.5, 4.5]]]
    """
    return adaptive_avg_pool_nd(input, output_size, 1)


def adaptive_avg_pool2d(input: torch.Tensor, output_size: Size) -> torch.Tensor:
    """Deterministic `torch.nn.functional.adaptive_avg_pool2d`: `P_h @ x @ P_w.T`.

    Examples:
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> adaptive_avg_pool2d(x, 2).tolist()
        [[[[2.5, 4.5], [10.5, 12.5]]]]
    """
    return adaptive_avg_pool_nd(input, output_size, 2)


def adaptive_avg_pool3d(input: torch.Tensor, output_size: Size) -> torch.Tensor:
    """Deterministic `torch.nn.functional.adaptive_avg_pool3d` (one matrix per axis).

    Examples:
        >>> adaptive_avg_pool3d(torch.ones(1, 1, 4, 4, 4), 1).tolist()
        [[[[[1.0]]]]]
    """
    return adaptive_avg_pool_nd(input, output_size, 3)


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
        x = apply_axis(x, -k, matrix("avg", args, x.dtype, x.device))
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

    Examples:
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

    Examples:
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

    Examples:
        >>> avg_pool3d(torch.ones(1, 1, 4, 4, 4), 2).shape
        torch.Size([1, 1, 2, 2, 2])
    """
    return _avg_pool(
        input, 3, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    )
