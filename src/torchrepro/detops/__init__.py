"""Deterministic replacements for the ops PyTorch cannot run deterministically on CUDA.

`torch.use_deterministic_algorithms(True)` raises on CUDA for ops with no deterministic
kernel (adaptive average pooling backward, linear interpolation backward, reflection
padding backward, NLL loss, cumsum, histc, weighted bincount, scatter_reduce 'prod').
`patch_nondeterministic_ops()` swaps the Python entry points of those ops
(`torch.nn.functional.*`, `torch.*`, `torch.Tensor.*`) for wrappers that route to a
deterministic replacement computing the same function, so user code does not change.
The wrappers route only where it is needed (a CUDA tensor while deterministic algorithms
are on; for ops that raise only in backward, only when a gradient is wanted) and call the
native op everywhere else. `force=True` routes every supported call, on any device, which
is how the tests exercise the replacements on a CPU.

The replacements rest on two kinds of primitives, both deterministic on CUDA whatever the
flags say: products with constant per-axis matrices (pooling, linear and cubic
interpolation, the backward of index selection along one axis), run by cuBLAS in a fixed
order; and, for segmented reductions (bincount, histc, scatter_reduce), a stable sort
followed by a log-step segmented scan of elementwise ops. A product with a constant matrix
also multiplies the zeros of that matrix by every input, so an `inf` in the input spreads
`nan` to its neighbours where the native kernel would not; finite inputs give the native
result up to float rounding.

Covers only calls made through the module attributes at call time: code that bound
`from torch.nn.functional import interpolate` before patching keeps the native op.

Examples:
    >>> from torchrepro import detops
    >>> with detops.deterministic_ops(force=True):
    ...     y = torch.nn.functional.adaptive_avg_pool1d(torch.arange(4.0).view(1, 1, 4), 2)
    >>> y.tolist(), detops.patched_ops()
    ([[[0.5, 2.5]]], [])
"""

from __future__ import annotations

from torchrepro.detops._losses import cross_entropy, nll_loss
from torchrepro.detops._patch import (
    deterministic_ops,
    forced,
    patch_nondeterministic_ops,
    patched_ops,
    served,
    unpatch_nondeterministic_ops,
)
from torchrepro.detops._pooling import (
    adaptive_avg_pool1d,
    adaptive_avg_pool2d,
    adaptive_avg_pool3d,
    avg_pool1d,
    avg_pool2d,
    avg_pool3d,
)
from torchrepro.detops._resample import interpolate, pad
from torchrepro.detops._scans import bincount, cumsum, histc, scatter_reduce

__all__ = [
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "bincount",
    "cross_entropy",
    "cumsum",
    "deterministic_ops",
    "forced",
    "histc",
    "interpolate",
    "nll_loss",
    "pad",
    "patch_nondeterministic_ops",
    "patched_ops",
    "scatter_reduce",
    "served",
    "unpatch_nondeterministic_ops",
]
