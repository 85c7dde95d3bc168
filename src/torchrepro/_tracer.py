"""Localization: which module, and which ATen op in it, first computed something different.

Once two runs are known to part at step ``s``, both are run again up to ``s`` with a
tracer on. From the end of step ``s - 1`` to the end of step ``s`` the tracer sees every
ATen op (through a ``TorchDispatchMode``) and writes, per op: its name, the module it ran
in (forward, or backward through ``torch.utils.module_tracker``), and exact digests of its
tensor inputs and outputs. :func:`localize` then walks the two traces side by side: the
culprit is the first op whose output differs while its inputs matched. If an op's inputs
differ before any op went wrong, the difference came from outside torch's ops (numpy,
Python, I/O, another process), and the op and module that first received it are named.

The tracer runs in the traced process and is started by the ``torchrepro run`` bootstrap
when ``TORCHREPRO_TRACE`` names a file and ``TORCHREPRO_TRACE_STEP`` a step.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from torchrepro.errors import RecordError
from torchrepro.fingerprint import _digest_tensors

TRACE_ENV = "TORCHREPRO_TRACE"
TRACE_STEP_ENV = "TORCHREPRO_TRACE_STEP"
OUTSIDE = "(outside any module)"

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
    """``"aten.index_add_.default"`` -> ``"index_add_"``."""
    parts = op.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "aten" else parts[0]


def _module_tracker() -> Any:
    try:
        from torch.utils.module_tracker import ModuleTracker
    except ImportError:  # torch < 2.4: ops are traced without their module
        return None
    return ModuleTracker()


def _innermost(parents: Iterable[str]) -> str:
    """The deepest module name, without the root's class name ("Net.layer3.0" -> "layer3.0")."""
    names = [name for name in parents if name != "Global"]
    if not names:
        return OUTSIDE
    deepest = max(names, key=lambda name: (name.count("."), name))
    root, _, rest = deepest.partition(".")
    return rest or root


class _Tracer(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Digests every op's tensor inputs and outputs while active."""

    def __init__(self, tracker: Any) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.tracker = tracker
        self.events: list[dict[str, Any]] = []
        self.pid = os.getpid()

    def __torch_dispatch__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if os.getpid() != self.pid:  # a DataLoader worker forked while tracing
            return func(*args, **kwargs)
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        # Digest inputs before the call: an in-place op overwrites them.
        before = _digest_tensors(inputs, None).hexdigests() if inputs else []
        out = func(*args, **kwargs)
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        after = _digest_tensors(outputs, None).hexdigests() if outputs else []
        tracker = self.tracker
        backward = torch._C._current_graph_task_id() != -1
        self.events.append(
            {
                "op": str(func),
                "module": _innermost(tracker.parents) if tracker is not None else OUTSIDE,
                "phase": "backward" if backward else "forward",
                "in": before,
                "out": after,
            }
        )
        return out


class _StepTrace:
    """Turns the tracer on from the end of step ``step - 1`` to the end of step ``step``."""

    def __init__(self, path: Path, step: int) -> None:
        self.path, self.step = path, step
        self.steps_seen = 0
        self.tracker = _module_tracker()
        self.tracer: _Tracer | None = None
        self.handle = register_optimizer_step_post_hook(self._on_step)
        if step == 0:
            self._start()

    def _start(self) -> None:
        if self.tracker is not None:
            self.tracker.__enter__()
        self.tracer = _Tracer(self.tracker)
        self.tracer.__enter__()  # type: ignore[no-untyped-call]

    def _on_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.steps_seen += 1
        if self.tracer is not None:
            tracer, self.tracer = self.tracer, None
            tracer.__exit__(None, None, None)  # type: ignore[no-untyped-call]
            if self.tracker is not None:
                self.tracker.__exit__(None, None, None)
            self.handle.remove()
            _write_trace(self.path, self.step, tracer.events)
        elif self.steps_seen == self.step:
            self._start()


def _write_trace(path: Path, step: int, events: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as file:
        file.write(json.dumps({"format": "torchrepro-trace", "step": step}) + "\n")
        for event in events:
            file.write(json.dumps(event, separators=(",", ":")) + "\n")
    os.replace(tmp, path)


def start_trace_from_env() -> bool:
    """Starts the step tracer if ``TORCHREPRO_TRACE`` and ``TORCHREPRO_TRACE_STEP`` are set.

    Returns:
        Whether a tracer was started.
    """
    path, step = os.environ.get(TRACE_ENV), os.environ.get(TRACE_STEP_ENV)
    if not path or step is None:
        return False
    _StepTrace(Path(path), int(step))
    return True


def read_trace(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The op events of a trace file written by the tracer.

    Raises:
        RecordError: The file is missing (the run ended before the traced step) or is not
            a trace.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise RecordError(
            f"no trace at {str(path)!r} ({error.strerror}); expected the traced run to reach "
            "the divergent step. Did the run stop or crash earlier?"
        ) from None
    if not lines or json.loads(lines[0]).get("format") != "torchrepro-trace":
        raise RecordError(f"{str(path)!r} is not a torchrepro trace file.")
    return [json.loads(line) for line in lines[1:]]


@dataclass(frozen=True)
class Localization:
    """Where two traces of the same step first part.

    Attributes:
        kind: ``"op"`` (an op computed a different output from the same inputs),
            ``"input"`` (an op's inputs already differed: the difference came from outside
            torch's ops), ``"control-flow"`` (the runs executed different ops),
            ``"length"`` (one run executed more ops) or ``"none"`` (traces identical).
        op: The ATen op, e.g. ``"aten.index_add_.default"``.
        module: The innermost module it ran in, or ``OUTSIDE``.
        phase: ``"forward"`` or ``"backward"``.
        index: Position of the op in the traced step.
        nondeterministic_ops: Ops with nondeterministic CUDA kernels that ran in that module
            during the step.
    """

    kind: str
    op: str | None = None
    module: str | None = None
    phase: str | None = None
    index: int | None = None
    other_op: str | None = None
    other_module: str | None = None
    nondeterministic_ops: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        """One line for the report."""
        where = f"{self.module} ({self.phase})"
        if self.kind == "op":
            return (
                f"{where}: {self.op} gave a different output from identical inputs "
                f"(op #{self.index} of the step)"
            )
        if self.kind == "input":
            return (
                f"{where}: the inputs of {self.op} already differed (op #{self.index}); they "
                "were made outside torch's ops (numpy, Python, I/O, another process)"
            )
        if self.kind == "control-flow":
            return (
                f"the runs executed different ops at op #{self.index}: {self.op} in "
                f"{self.module} vs {self.other_op} in {self.other_module} ({self.phase})"
            )
        if self.kind == "length":
            return f"one run executed more ops in the step, from op #{self.index} ({self.op})"
        return "the traced step was identical in both runs"


def _nondeterministic_in(events: Sequence[dict[str, Any]], module: str | None) -> tuple[str, ...]:
    seen = {
        op_base_name(event["op"])
        for event in events
        if event["module"] == module and op_base_name(event["op"]) in NONDETERMINISTIC_OPS
    }
    return tuple(sorted(seen))


def localize(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> Localization:
    """The first op at which two traces of the same step part.

    Example:
        >>> localize(read_trace("run1.trace"), read_trace("run2.trace")).describe()
        'layer3.0 (forward): aten.add.Tensor gave a different output from identical inputs ...'
    """
    for index, (x, y) in enumerate(zip(a, b)):
        if x["op"] != y["op"]:
            kind, op, other = "control-flow", x["op"], y["op"]
        elif x["in"] != y["in"]:
            kind, op, other = "input", x["op"], None
        elif x["out"] != y["out"]:
            kind, op, other = "op", x["op"], None
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
        )
    if len(a) != len(b):
        longer = a if len(a) > len(b) else b
        shorter = min(len(a), len(b))
        event = longer[shorter]
        return Localization(
            kind="length",
            op=event["op"],
            module=event["module"],
            phase=event["phase"],
            index=shorter,
        )
    return Localization(kind="none")
