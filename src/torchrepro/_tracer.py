"""The op tracer of a localization replay: every ATen op of one step, digested.

Runs in the replayed process: the ``torchrepro run`` bootstrap calls
:func:`start_trace_from_env` when ``TORCHREPRO_TRACE`` names a file and
``TORCHREPRO_TRACE_STEP`` a step. From the end of step ``s - 1`` to the end of step ``s``
a ``TorchDispatchMode`` sees every ATen op and notes its name, the module it ran in
(forward, or backward through ``torch.utils.module_tracker``) and exact digests of its
tensor inputs and outputs; the trace is then written in the layout that
:mod:`torchrepro.localize` reads and analyses. Steps are optimizer steps, or, in a replay
that records (:meth:`StepTrace.follow`), the record's entries, whatever marks them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from torchrepro import _contract
from torchrepro._files import atomic_text_writer
from torchrepro.digests import _digest_tensors
from torchrepro.localize import OUTSIDE, TRACE_FORMAT, trace_event
from torchrepro.records.files import process_argv

__all__ = ["StepTrace", "start_trace_from_env"]


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
        module = _innermost(tracker.parents) if tracker is not None else OUTSIDE
        phase = "backward" if backward else "forward"
        self.events.append(trace_event(str(func), module, phase, before, after))
        return out


class StepTrace:
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

    def follow(self, recorder: Any) -> None:
        """Counts the steps of ``recorder`` (a :class:`~torchrepro.records.Recorder`) instead.

        A record's entry ``s`` is then the step traced, whether an optimizer step, a
        backward pass with a hand-written update or a ``torchrepro.step()`` call made it.
        """
        self.handle.remove()
        recorder.add_step_listener(self._on_boundary)

    def _on_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._on_boundary()

    def _on_boundary(self) -> None:
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
    # Atomic: check waits for the file to appear and reads it at once.
    with atomic_text_writer(path) as file:
        file.write(json.dumps({"format": TRACE_FORMAT, "step": step}) + "\n")
        for event in events:
            file.write(json.dumps(event, separators=(",", ":")) + "\n")


def start_trace_from_env() -> StepTrace | None:
    """Starts the step tracer if ``TORCHREPRO_TRACE`` and ``TORCHREPRO_TRACE_STEP`` are set.

    With ``TORCHREPRO_TRACE_ARGV`` (a JSON list) only the process of that command line
    traces: the one training process of a command that ``check`` replays.

    Returns:
        The tracer started, or None.

    Example:
        >>> os.environ["TORCHREPRO_TRACE"], os.environ["TORCHREPRO_TRACE_STEP"] = "t.jsonl", "1"
        >>> start_trace_from_env()  # doctest: +ELLIPSIS
        <torchrepro._tracer.StepTrace object at ...>
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> for _ in range(2):
        ...     opt.zero_grad(); model(torch.ones(1, 2)).sum().backward(); opt.step()
        >>> from torchrepro.localize import read_trace
        >>> events = read_trace("t.jsonl")  # the ops of step 1
        >>> [(e["op"], e["phase"]) for e in events if e["module"] == "Linear"][:2]
        [('aten.t.default', 'forward'), ('aten.addmm.default', 'forward')]
        >>> len(events[-1]["out"][0])  # a 128-bit digest of the last op's output
        32
    """
    path, step = os.environ.get(_contract.TRACE), os.environ.get(_contract.TRACE_STEP)
    if not path or step is None:
        return None
    wanted = os.environ.get(_contract.TRACE_ARGV)
    if wanted and json.loads(wanted) != process_argv():
        return None  # another process of the command: check replays the one that parted
    return StepTrace(Path(path), int(step))
