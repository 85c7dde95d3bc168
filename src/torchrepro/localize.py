"""Localization: which module, and which ATen op in it, first computed something different.

Once two runs are known to part at step ``s``, both are run again up to ``s`` with the op
tracer on (:mod:`torchrepro._tracer`, started by the ``torchrepro run`` bootstrap when
``TORCHREPRO_TRACE`` names a file and ``TORCHREPRO_TRACE_STEP`` a step). From the end of
step ``s - 1`` to the end of step ``s`` it sees every ATen op and writes a trace: a header
line ``{"format": "torchrepro-trace", "step": s}``, then one :func:`trace_event` per op:
its name, the module it ran in (forward, or backward), and exact digests of its tensor
inputs and outputs and of its other arguments. :func:`first_difference` then walks the two
traces side by side: the culprit is the first op whose output differs while its inputs
matched. If an op's inputs differ before any op went wrong, the difference came from
outside torch's ops (numpy, Python, I/O, another process), and the op and module that
first received it are named.

Only computed values count. Memory that an op of the empty family (:data:`EMPTY_OPS`)
made and no op wrote yet digests as :data:`UNWRITTEN`, an argument that an op overwrites
without reading it as :data:`OVERWRITTEN`: they compare equal. An op that reads unwritten
memory and computes something different is named as such (kind ``"uninitialized"``), and
an op that draws random numbers (``random``) then says that the RNG state differed.

This module reads traces and imports no torch, so the launching process of
``torchrepro check`` uses it.

Examples:
    >>> a = [trace_event("aten.mm.default", "fc", "forward", ["x", "w"], ["y"])]
    >>> b = [trace_event("aten.mm.default", "fc", "forward", ["x", "w"], ["y2"])]
    >>> found = first_difference(a, b)
    >>> found.kind, found.op, found.module, found.phase
    ('op', 'aten.mm.default', 'fc', 'forward')
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchrepro.errors import RecordError

__all__ = [
    "EMPTY_OPS",
    "NONDETERMINISTIC_OPS",
    "OUTSIDE",
    "OVERWRITTEN",
    "RANDOM_OPS",
    "TRACE_FORMAT",
    "UNWRITTEN",
    "Localization",
    "first_difference",
    "op_base_name",
    "read_trace",
    "trace_event",
]

TRACE_FORMAT = "torchrepro-trace"
OUTSIDE = "(outside any module)"
UNWRITTEN = "unwritten"
"""The digest of memory that no op has written yet (see :data:`EMPTY_OPS`)."""
OVERWRITTEN = "overwritten"
"""The digest of an argument that the op writes without reading it (``copy_``'s ``self``)."""

# Ops that return uninitialized memory, by op base name: what their outputs hold is
# whatever was there before, until an op writes it.
EMPTY_OPS = frozenset(
    {"empty", "empty_like", "empty_strided", "empty_permuted", "new_empty", "new_empty_strided"}
    | {"_empty_affine_quantized", "_empty_per_channel_affine_quantized"}
)

# Ops that draw random numbers, by op base name; the tracer also counts any op that takes
# a Generator, and attention with a dropout_p above 0.
RANDOM_OPS = frozenset(
    {"bernoulli", "bernoulli_", "normal", "normal_", "uniform_", "random_", "exponential_"}
    | {"geometric_", "cauchy_", "log_normal_", "native_dropout", "_fused_dropout", "rand"}
    | {"rand_like", "randn", "randn_like", "randint", "randint_like", "randperm", "multinomial"}
    | {"poisson", "binomial", "_standard_gamma", "_sample_dirichlet", "rrelu_with_noise"}
    | {"rrelu_with_noise_"}
)

# Ops that compute nothing: they make memory or point a tensor at a storage (a
# DataLoader worker's batch arrives through set_, when it arrives). They are not lined
# up between the runs; the values they bring are compared where an op reads them.
_NOT_COMPUTED = EMPTY_OPS | {"set_"}

# ATen ops whose CUDA kernels are nondeterministic (atomics) or have no deterministic
# implementation, by op base name; from PyTorch's use_deterministic_algorithms docs.
NONDETERMINISTIC_OPS = frozenset(
    {
        "index_add",
        "index_add_",
        "index_copy",
        "index_copy_",
        "index_put",
        "index_put_",
        "_index_put_impl_",
        "scatter",
        "scatter_",
        "scatter_add",
        "scatter_add_",
        "scatter_reduce",
        "scatter_reduce_",
        "put",
        "put_",
        "embedding_dense_backward",
        "embedding_bag",
        "_embedding_bag",
        "_embedding_bag_backward",
        "histc",
        "bincount",
        "kthvalue",
        "median",
        "cumsum",
        "cumsum_",
        "nll_loss2d_forward",
        "nll_loss2d_backward",
        "ctc_loss",
        "_ctc_loss",
        "_ctc_loss_backward",
        "grid_sampler_2d_backward",
        "grid_sampler_3d_backward",
        "adaptive_avg_pool2d_backward",
        "_adaptive_avg_pool2d_backward",
        "adaptive_avg_pool3d_backward",
        "_adaptive_avg_pool3d_backward",
        "adaptive_max_pool2d_backward",
        "adaptive_max_pool3d_backward",
        "avg_pool3d_backward",
        "max_pool3d_with_indices_backward",
        "fractional_max_pool2d_backward",
        "fractional_max_pool3d_backward",
        "max_unpool1d",
        "max_unpool2d",
        "max_unpool3d",
        "reflection_pad1d_backward",
        "reflection_pad2d_backward",
        "reflection_pad3d_backward",
        "replication_pad1d_backward",
        "replication_pad2d_backward",
        "replication_pad3d_backward",
        "upsample_linear1d_backward",
        "upsample_bilinear2d_backward",
        "upsample_bicubic2d_backward",
        "upsample_trilinear3d_backward",
        "_scaled_dot_product_efficient_attention_backward",
        "_scaled_dot_product_flash_attention_backward",
        "_scaled_dot_product_cudnn_attention_backward",
    }
)


def op_base_name(op: str) -> str:
    """The op's name without namespace and overload: ``"aten.index_add_.default"`` ->
    ``"index_add_"``, ``"mylib.noisy.default"`` -> ``"noisy"``.

    Examples:
        >>> op_base_name("aten.index_add_.default") in NONDETERMINISTIC_OPS
        True
        >>> op_base_name("mylib.noisy.default")
        'noisy'
    """
    parts = op.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def trace_event(
    op: str,
    module: str,
    phase: str,
    inputs: list[str],
    outputs: list[str],
    *,
    arguments: str | None = None,
    unwritten: Sequence[str] = (),
    random: bool = False,
) -> dict[str, Any]:
    """One op of a trace: its name, module, phase and the digests of its inputs and outputs.

    Args:
        op, module, phase: The op, the innermost module it ran in, forward or backward.
        inputs, outputs: Digests of its tensor inputs and outputs.
        arguments: A digest of its other arguments (numbers, shapes, flags), if any.
        unwritten: The ops that made unwritten memory this op read (:data:`EMPTY_OPS`).
        random: It drew random numbers.

    Examples:
        >>> trace_event("aten.add.Tensor", OUTSIDE, "forward", ["a", "b"], ["c"])["module"]
        '(outside any module)'
        >>> trace_event("aten.bernoulli_.float", "drop", "forward", [OVERWRITTEN], ["m"],
        ...             random=True)["random"]
        True
    """
    event: dict[str, Any] = {"op": op, "module": module, "phase": phase, "in": inputs}
    event["out"] = outputs
    if arguments is not None:
        event["args"] = arguments
    if unwritten:
        event["unwritten"] = list(unwritten)
    if random:
        event["random"] = True
    return event


def read_trace(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The op events of a trace file written by the tracer.

    Raises:
        RecordError: The file is missing (the run ended before the traced step) or is not
            a trace.

    Examples:
        >>> read_trace("run1.trace")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        torchrepro.errors.RecordError: no trace at 'run1.trace' (No such file or directory); ...
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else error.reason
        raise RecordError(
            f"no trace at {str(path)!r} ({reason}); expected the traced run to reach "
            "the divergent step. Did the run stop or crash earlier?"
        ) from None
    try:
        found = [json.loads(line) for line in lines]
    except json.JSONDecodeError as error:
        found = [error.msg]
    if not found or not isinstance(found[0], dict) or found[0].get("format") != TRACE_FORMAT:
        raise RecordError(
            f"{str(path)!r} is not a torchrepro trace file; got {(lines or [''])[0][:80]!r}; "
            f"expected JSON lines under a header with format={TRACE_FORMAT!r}. Pass a trace "
            "written by the op tracer of a torchrepro check replay."
        )
    return found[1:]


@dataclass(frozen=True)
class Localization:
    """Where two traces of the same step first part.

    Attributes:
        kind: ``"op"`` (an op computed a different output from the same inputs),
            ``"uninitialized"`` (an op read memory that no op had written, and its output
            differs), ``"input"`` (an op's inputs already differed: the difference came
            from outside torch's ops), ``"control-flow"`` (the runs executed different
            ops), ``"length"`` (one run executed more ops) or ``"none"`` (traces identical).
        op: The ATen op, e.g. ``"aten.index_add_.default"``.
        module: The innermost module it ran in, by its path (``"encoder.layer.1.dense"``),
            or ``OUTSIDE``.
        phase: ``"forward"`` or ``"backward"``.
        index: Position of the op in the traced step.
        other_op, other_module: For ``"control-flow"``, the op the other run executed.
        nondeterministic_ops: Ops with nondeterministic CUDA kernels that ran in that module
            during the step.
        source_op: For ``"uninitialized"``, the op of the empty family that made the memory.
        random: For ``"op"``, the op draws random numbers: a different output from identical
            inputs then means that the RNG state differed.
        rank: Under torchrun, the rank whose traces these are.
    """

    kind: str
    op: str | None = None
    module: str | None = None
    phase: str | None = None
    index: int | None = None
    other_op: str | None = None
    other_module: str | None = None
    nondeterministic_ops: tuple[str, ...] = field(default_factory=tuple)
    source_op: str | None = None
    random: bool = False
    rank: int | None = None

    def describe(self) -> str:
        """One line for the report.

        Examples:
            >>> print(Localization("uninitialized", "aten.add.Tensor", "fc", "forward", 4,
            ...                    source_op="aten.empty.memory_format", rank=1).describe())
            rank 1: fc (forward): aten.add.Tensor read memory that no op had written (made by
            aten.empty.memory_format) and gave a different output (op #4 of the step)
        """
        rank = "" if self.rank is None else f"rank {self.rank}: "
        where = f"{rank}{self.module} ({self.phase})"
        if self.kind == "op" and self.random:
            return (
                f"{where}: {self.op} drew different random numbers from identical inputs: "
                f"the RNG state differed (op #{self.index} of the step)"
            )
        if self.kind == "op":
            return (
                f"{where}: {self.op} gave a different output from identical inputs "
                f"(op #{self.index} of the step)"
            )
        if self.kind == "uninitialized":
            return (
                f"{where}: {self.op} read memory that no op had written (made by "
                f"{self.source_op}) and gave a different output (op #{self.index} of the step)"
            )
        if self.kind == "input":
            return (
                f"{where}: the inputs of {self.op} already differed (op #{self.index}); they "
                "were made outside torch's ops (numpy, Python, I/O, another process)"
            )
        if self.kind == "control-flow":
            return (
                f"{rank}the runs executed different ops at op #{self.index}: {self.op} in "
                f"{self.module} vs {self.other_op} in {self.other_module} ({self.phase})"
            )
        if self.kind == "length":
            return f"{rank}one run executed more ops in the step, from op #{self.index} ({self.op})"
        return f"{rank}the traced step was identical in both runs"


def _nondeterministic_in(events: Sequence[dict[str, Any]], module: str | None) -> tuple[str, ...]:
    seen = {
        op_base_name(event["op"])
        for event in events
        if event["module"] == module and op_base_name(event["op"]) in NONDETERMINISTIC_OPS
    }
    return tuple(sorted(seen))


def _computed(events: Sequence[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """The events of ops that compute, with their place in the trace."""
    return [(i, e) for i, e in enumerate(events) if op_base_name(e["op"]) not in _NOT_COMPUTED]


def first_difference(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> Localization:
    """The first op at which two traces of the same step part.

    Ops that compute nothing (the empty family, ``set_``) are passed over: a DataLoader
    worker's batch arrives when it arrives; what the ops bring is compared where it is read.

    Examples:
        >>> a = [trace_event("aten.add.Tensor", "layer3.0", "forward", ["x"], ["y"])]
        >>> first_difference(a, a).kind
        'none'
        >>> b = [trace_event("aten.add.Tensor", "layer3.0", "forward", ["x2"], ["y"])]
        >>> print(first_difference(a, b).describe())  # doctest: +ELLIPSIS
        layer3.0 (forward): the inputs of aten.add.Tensor already differed (op #0); they ...
        >>> made = trace_event("aten.empty.memory_format", "fc", "forward", [], [UNWRITTEN])
        >>> read = [trace_event("aten.add_.Tensor", "fc", "forward", [UNWRITTEN, "x"], [y],
        ...                     unwritten=["aten.empty.memory_format"]) for y in "yz"]
        >>> found = first_difference([made, read[0]], [made, read[1]])
        >>> found.kind, found.op, found.source_op, found.index
        ('uninitialized', 'aten.add_.Tensor', 'aten.empty.memory_format', 1)
    """
    ours, theirs = _computed(a), _computed(b)
    for (index, x), (_, y) in zip(ours, theirs):
        source, random = None, False
        if x["op"] != y["op"]:
            kind, op, other = "control-flow", x["op"], y["op"]
        elif x["in"] != y["in"] or x.get("args") != y.get("args"):
            kind, op, other = "input", x["op"], None
        elif x["out"] != y["out"]:
            kind, op, other = "op", x["op"], None
            made = x.get("unwritten") or y.get("unwritten")
            if made:
                kind, source = "uninitialized", made[0]
            random = bool(x.get("random"))
        else:
            continue
        return Localization(
            kind=kind,
            op=op,
            other_op=other,
            other_module=y["module"] if other is not None else None,
            module=x["module"],
            phase=x["phase"],
            index=index,
            nondeterministic_ops=_nondeterministic_in(a, x["module"]),
            source_op=source,
            random=random and kind == "op",
        )
    if len(ours) != len(theirs):
        longer = ours if len(ours) > len(theirs) else theirs
        index, event = longer[min(len(ours), len(theirs))]
        return Localization(
            kind="length",
            op=event["op"],
            module=event["module"],
            phase=event["phase"],
            index=index,
        )
    return Localization(kind="none")
