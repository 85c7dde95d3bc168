"""Routing and patching: wrappers that send a patched entry point to its replacement only
where it is needed, and the patch life cycle that installs and removes them."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from torchrepro._derive import require_bool
from torchrepro.detops._losses import cross_entropy, nll_loss
from torchrepro.detops._pooling import (
    adaptive_avg_pool1d,
    adaptive_avg_pool2d,
    adaptive_avg_pool3d,
    avg_pool1d,
    avg_pool2d,
    avg_pool3d,
)
from torchrepro.detops._resample import interpolate, interpolate_supported
from torchrepro.detops._resample import pad as _pad_replacement
from torchrepro.detops._scans import bincount, cumsum, histc, scatter_reduce
from torchrepro.errors import DeterminismError, ReplacementError

_LINEAR_MODES = ("linear", "bilinear", "bicubic", "trilinear")

_force = False
# The replacements that ran while `served()` collects them, by function name; None if not.
_served: list[str] | None = None

_F = TypeVar("_F", bound=Callable[..., Any])


def _serve(replacement: _F) -> _F:
    """`replacement` itself, noted as having served a call when `served()` collects."""
    if _served is not None:
        _served.append(replacement.__name__)
    return replacement


def _route(t: Any, *, needed: bool, backward_only: bool) -> bool:
    """Whether a patched entry point should call the replacement for tensor `t`.

    `needed`: the native op raises (or is nondeterministic) on CUDA in deterministic mode
    for these arguments; otherwise only `force` routes, since the native op is then
    deterministic and usually the fastest.
    """
    if not isinstance(t, torch.Tensor):
        return False
    if _force:
        return True
    if not (needed and t.is_cuda and torch.are_deterministic_algorithms_enabled()):
        return False
    return not backward_only or (t.requires_grad and torch.is_grad_enabled())


def _floating(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point or dtype.is_complex


# Native entry points, captured once at import so that wrappers never call themselves.
_NATIVE: dict[str, Callable[..., Any]] = {
    **{
        f"F.{n}": getattr(F, n)
        for n in (
            "adaptive_avg_pool1d",
            "adaptive_avg_pool2d",
            "adaptive_avg_pool3d",
            "avg_pool1d",
            "avg_pool2d",
            "avg_pool3d",
            "interpolate",
            "pad",
            "nll_loss",
            "cross_entropy",
        )
    },
    **{f"torch.{n}": getattr(torch, n) for n in ("cumsum", "bincount", "histc", "scatter_reduce")},
    **{
        f"Tensor.{n}": getattr(torch.Tensor, n)
        for n in (
            "cumsum",
            "bincount",
            "histc",
            "scatter_reduce",
        )
    },
}


def _adaptive_entry(rank: int) -> Callable[..., torch.Tensor]:
    native = _NATIVE[f"F.adaptive_avg_pool{rank}d"]
    replacement = (adaptive_avg_pool1d, adaptive_avg_pool2d, adaptive_avg_pool3d)[rank - 1]

    def entry(input: torch.Tensor, output_size: Any) -> torch.Tensor:
        if _route(input, needed=rank > 1, backward_only=True):
            return _serve(replacement)(input, output_size)
        return native(input, output_size)  # type: ignore[no-any-return]

    entry.__name__ = entry.__qualname__ = f"adaptive_avg_pool{rank}d"
    entry.__doc__ = native.__doc__
    return entry


def _avg_pool_entry(rank: int) -> Callable[..., torch.Tensor]:
    native = _NATIVE[f"F.avg_pool{rank}d"]
    replacement = (avg_pool1d, avg_pool2d, avg_pool3d)[rank - 1]

    def entry(input: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if _route(input, needed=rank == 3, backward_only=True):
            return _serve(replacement)(input, *args, **kwargs)
        return native(input, *args, **kwargs)  # type: ignore[no-any-return]

    entry.__name__ = entry.__qualname__ = f"avg_pool{rank}d"
    entry.__doc__ = native.__doc__
    return entry


def _interpolate_entry(
    input: torch.Tensor,
    size: Any = None,
    scale_factor: Any = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
    recompute_scale_factor: bool | None = None,
    antialias: bool = False,
) -> torch.Tensor:
    args = (input, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias)
    if (
        _route(input, needed=mode in _LINEAR_MODES, backward_only=True)
        and interpolate_supported(mode, input.dim() - 2, antialias)
        and (size is None) != (scale_factor is None)
    ):
        return _serve(interpolate)(*args)
    return _NATIVE["F.interpolate"](*args)  # type: ignore[no-any-return]


def _pad_entry(
    input: torch.Tensor, pad: Sequence[int], mode: str = "constant", value: float | None = None
) -> torch.Tensor:
    if (
        mode in ("reflect", "replicate", "circular")
        and value is None
        and _route(input, needed=mode == "reflect", backward_only=True)
    ):
        return _serve(_pad_replacement)(input, pad, mode)
    return _NATIVE["F.pad"](input, pad, mode, value)  # type: ignore[no-any-return]


def _nll_loss_entry(
    input: torch.Tensor, target: torch.Tensor, *args: Any, **kwargs: Any
) -> torch.Tensor:
    if _route(input, needed=True, backward_only=False):
        return _serve(nll_loss)(input, target, *args, **kwargs)
    return _NATIVE["F.nll_loss"](input, target, *args, **kwargs)  # type: ignore[no-any-return]


def _cross_entropy_entry(
    input: torch.Tensor, target: torch.Tensor, *args: Any, **kwargs: Any
) -> torch.Tensor:
    if (
        isinstance(target, torch.Tensor)
        and not target.is_floating_point()
        and _route(input, needed=True, backward_only=False)
    ):
        return _serve(cross_entropy)(input, target, *args, **kwargs)
    return _NATIVE["F.cross_entropy"](input, target, *args, **kwargs)  # type: ignore[no-any-return]


def _cumsum_entry(native_key: str) -> Callable[..., torch.Tensor]:
    native = _NATIVE[native_key]

    def entry(input: torch.Tensor, dim: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        dtype = kwargs.get("dtype", args[0] if args else None)
        result_dtype = dtype if isinstance(dtype, torch.dtype) else getattr(input, "dtype", None)
        if (
            isinstance(dim, int)
            and len(args) <= 1
            and set(kwargs) <= {"dtype"}
            and result_dtype is not None
            and _floating(result_dtype)
            and _route(input, needed=True, backward_only=False)
        ):
            return _serve(cumsum)(input, dim, dtype=dtype)
        return native(input, dim, *args, **kwargs)  # type: ignore[no-any-return]

    entry.__name__ = entry.__qualname__ = "cumsum"
    entry.__doc__ = native.__doc__
    return entry


def _bincount_entry(native_key: str) -> Callable[..., torch.Tensor]:
    native = _NATIVE[native_key]

    def entry(
        input: torch.Tensor, weights: torch.Tensor | None = None, minlength: int = 0
    ) -> torch.Tensor:
        if _route(input, needed=weights is not None, backward_only=False):
            return _serve(bincount)(input, weights, minlength)
        return native(input, weights, minlength)  # type: ignore[no-any-return]

    entry.__name__ = entry.__qualname__ = "bincount"
    entry.__doc__ = native.__doc__
    return entry


def _histc_entry(native_key: str) -> Callable[..., torch.Tensor]:
    native = _NATIVE[native_key]

    def entry(input: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if "out" not in kwargs and _route(input, needed=True, backward_only=False):
            return _serve(histc)(input, *args, **kwargs)
        return native(input, *args, **kwargs)  # type: ignore[no-any-return]

    entry.__name__ = entry.__qualname__ = "histc"
    entry.__doc__ = native.__doc__
    return entry


def _scatter_reduce_entry(native_key: str) -> Callable[..., torch.Tensor]:
    native = _NATIVE[native_key]

    def entry(
        input: torch.Tensor,
        dim: int,
        index: torch.Tensor,
        src: torch.Tensor,
        reduce: str,
        *,
        include_self: bool = True,
        **kwargs: Any,
    ) -> torch.Tensor:
        supported = reduce == "prod" or (
            reduce in ("sum", "mean") and _floating(getattr(input, "dtype", torch.int64))
        )
        if not kwargs and supported and _route(input, needed=reduce == "prod", backward_only=False):
            return _serve(scatter_reduce)(input, dim, index, src, reduce, include_self=include_self)
        return native(  # type: ignore[no-any-return]
            input, dim, index, src, reduce, include_self=include_self, **kwargs
        )

    entry.__name__ = entry.__qualname__ = "scatter_reduce"
    entry.__doc__ = native.__doc__
    return entry


# (owner, attribute, qualified name, wrapper); the qualified names are what patching returns.
_TARGETS: list[tuple[Any, str, str, Callable[..., Any]]] = [
    *[
        (
            F,
            f"adaptive_avg_pool{r}d",
            f"torch.nn.functional.adaptive_avg_pool{r}d",
            _adaptive_entry(r),
        )
        for r in (1, 2, 3)
    ],
    *[
        (F, f"avg_pool{r}d", f"torch.nn.functional.avg_pool{r}d", _avg_pool_entry(r))
        for r in (1, 2, 3)
    ],
    (F, "interpolate", "torch.nn.functional.interpolate", _interpolate_entry),
    (F, "pad", "torch.nn.functional.pad", _pad_entry),
    (F, "nll_loss", "torch.nn.functional.nll_loss", _nll_loss_entry),
    (F, "cross_entropy", "torch.nn.functional.cross_entropy", _cross_entropy_entry),
    (torch, "cumsum", "torch.cumsum", _cumsum_entry("torch.cumsum")),
    (torch.Tensor, "cumsum", "torch.Tensor.cumsum", _cumsum_entry("Tensor.cumsum")),
    (torch, "bincount", "torch.bincount", _bincount_entry("torch.bincount")),
    (torch.Tensor, "bincount", "torch.Tensor.bincount", _bincount_entry("Tensor.bincount")),
    (torch, "histc", "torch.histc", _histc_entry("torch.histc")),
    (torch.Tensor, "histc", "torch.Tensor.histc", _histc_entry("Tensor.histc")),
    (
        torch,
        "scatter_reduce",
        "torch.scatter_reduce",
        _scatter_reduce_entry("torch.scatter_reduce"),
    ),
    (
        torch.Tensor,
        "scatter_reduce",
        "torch.Tensor.scatter_reduce",
        _scatter_reduce_entry("Tensor.scatter_reduce"),
    ),
]

_MISSING = object()
_lock = threading.RLock()
# What each patched attribute held before patching (_MISSING: inherited, not set on owner).
_saved: list[tuple[Any, str, object]] = []


def patch_nondeterministic_ops(*, force: bool = False) -> list[str]:
    """Route the ops PyTorch cannot run deterministically on CUDA to deterministic replacements.

    Idempotent: a second call patches nothing more and only updates `force`. Undo with
    `unpatch_nondeterministic_ops()`, or use the `deterministic_ops()` context manager.

    Args:
        force: route every supported call to its replacement, on any device and whatever
            the determinism flags say (for tests, and to compare against the native ops).
            By default only CUDA tensors under `torch.use_deterministic_algorithms(True)`
            are routed, and ops that raise only in backward only when a gradient is wanted.

    Returns:
        The qualified names of the patched entry points.

    Examples:
        >>> names = patch_nondeterministic_ops()
        >>> "torch.nn.functional.interpolate" in names
        True
        >>> unpatch_nondeterministic_ops() == names
        True
    """
    global _force
    require_bool(force, "force", ReplacementError)
    with _lock:
        if not _saved:
            for owner, attr, _, wrapper in _TARGETS:
                _saved.append((owner, attr, owner.__dict__.get(attr, _MISSING)))
                setattr(owner, attr, wrapper)
        _force = force
        return patched_ops()


def unpatch_nondeterministic_ops() -> list[str]:
    """Restore the native ops exactly as they were before patching; a no-op if not patched.

    Raises:
        DeterminismError: someone replaced a patched attribute after torchrepro did;
            nothing is restored then (restoring would silently drop their patch).

    Returns:
        The qualified names of the restored entry points ([] if nothing was patched).

    Examples:
        >>> _ = patch_nondeterministic_ops()
        >>> len(unpatch_nondeterministic_ops()) > 0, unpatch_nondeterministic_ops()
        (True, [])
    """
    global _force
    with _lock:
        if not _saved:
            return []
        names = patched_ops()
        for owner, attr, name, wrapper in _TARGETS:
            if owner.__dict__.get(attr) is not wrapper:
                raise DeterminismError(
                    f"{name} was replaced after torchrepro patched it; got "
                    f"{owner.__dict__.get(attr)!r}, expected torchrepro's wrapper. Undo that "
                    "patch first, then call unpatch_nondeterministic_ops()."
                )
        for owner, attr, before in reversed(_saved):
            if before is _MISSING:
                delattr(owner, attr)
            else:
                setattr(owner, attr, before)
        _saved.clear()
        _force = False
        return names


def forced() -> bool:
    """Whether the patch routes every supported call, on any device (``force=True``).

    Examples:
        >>> with deterministic_ops(force=True):
        ...     forced()
        True
        >>> forced()
        False
    """
    return _force


def patched_ops() -> list[str]:
    """Qualified names of the entry points patched now ([] when not patched).

    Examples:
        >>> patched_ops()
        []
    """
    return [name for _, _, name, _ in _TARGETS] if _saved else []


@contextlib.contextmanager
def deterministic_ops(*, force: bool = False) -> Iterator[list[str]]:
    """Context manager form of `patch_nondeterministic_ops`; nesting-safe.

    On exit it restores exactly what it found: still patched (with the previous `force`) if
    it was patched on entry, unpatched otherwise.

    Examples:
        >>> with deterministic_ops(force=True):
        ...     y = torch.cumsum(torch.ones(3), 0)   # runs the replacement on the CPU
        >>> y.tolist(), patched_ops()
        ([1.0, 2.0, 3.0], [])
    """
    with _lock:
        was_patched, was_forced = bool(_saved), _force
        names = patch_nondeterministic_ops(force=force)
    try:
        yield names
    finally:
        with _lock:
            if was_patched:
                patch_nondeterministic_ops(force=was_forced)
            else:
                unpatch_nondeterministic_ops()


@contextlib.contextmanager
def served() -> Iterator[list[str]]:
    """Collects the names of the replacements that serve calls inside the block, in order.

    `torchrepro doctor` reports with it which replacement ran an op.

    Examples:
        >>> with deterministic_ops(force=True), served() as names:
        ...     _ = torch.cumsum(torch.ones(3), 0)
        >>> names
        ['cumsum']
    """
    global _served
    outer, _served = _served, []
    try:
        yield _served
    finally:
        _served = outer
