"""Per-axis building blocks of the replacements: cached constant maps, and products and
selections along one axis whose backward passes need no atomic add."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Union

import torch

from torchrepro.detops import _maps
from torchrepro.errors import ReplacementError

Size = Union[int, Sequence[Union[int, None]], None]


@functools.lru_cache(maxsize=512)
def matrix(
    kind: str, args: tuple[Any, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The constant matrix `kind` ("adaptive", "avg", "linear", "cubic", "upper") for `args`.

    Examples:
        >>> matrix("upper", (3,), torch.float32, torch.device("cpu")).tolist()
        [[1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]
    """
    # Built once per shape on the CPU in float64, cast once, and kept on the device:
    # the host-to-device copy would otherwise be paid at every step.
    builders: dict[str, Callable[..., torch.Tensor]] = {
        "adaptive": _maps.adaptive_pool_matrix,
        "avg": _maps.avg_pool_matrix,
        "linear": _maps.linear_matrix,
        "cubic": _maps.cubic_matrix,
        "upper": lambda n: torch.ones(n, n, dtype=torch.float64).triu(),
    }
    # Outside inference mode even when first asked for inside it: a cached inference
    # tensor could never be saved for a later backward pass.
    with torch.inference_mode(False):
        return builders[kind](*args).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=512)
def index_map(kind: str, args: tuple[Any, ...], device: torch.device) -> torch.Tensor:
    """The constant source index `kind` ("nearest", "reflect", "replicate", "circular").

    Examples:
        >>> index_map("reflect", (3, 2, 1), torch.device("cpu")).tolist()
        [2, 1, 0, 1, 2, 1]
    """
    builders: dict[str, Callable[..., torch.Tensor]] = {
        "nearest": _maps.nearest_index,
        "reflect": _maps.reflect_index,
        "replicate": _maps.replicate_index,
        "circular": _maps.circular_index,
    }
    with torch.inference_mode(False):  # as in matrix
        return builders[kind](*args).to(device)


def apply_axis(x: torch.Tensor, axis: int, m: torch.Tensor) -> torch.Tensor:
    """Apply the (new, old) matrix `m` along negative axis `axis` of `x`.

    Examples:
        >>> apply_axis(torch.ones(2, 3), -1, torch.ones(1, 3)).tolist()
        [[3.0], [3.0]]
    """
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
        return apply_axis(grad, ctx.axis, onehot.T), None, None


def select_along(x: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
    """`x.index_select(axis, index)`, with gradients summed by a one-hot matrix product.

    Examples:
        >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> select_along(x, -1, torch.tensor([0, 0, 1])).sum().backward()
        >>> x.grad.tolist()
        [2.0, 1.0]
    """
    return _SelectAlong.apply(x, axis, index)  # type: ignore[no-untyped-call,no-any-return]


def spatial_sizes(x: torch.Tensor, size: Size, rank: int, what: str) -> list[int]:
    """The `rank` output sizes that `size` asks `what` for (None keeps an input size).

    Examples:
        >>> spatial_sizes(torch.ones(1, 2, 6, 5), (None, 3), 2, "adaptive_avg_pool2d")
        [6, 3]
    """
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
