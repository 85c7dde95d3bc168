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
from torchrepro.localize import (
    OUTSIDE,
    TRACE_FORMAT,
    UNINITIALIZED,
    UNINITIALIZED_OPS,
    op_base_name,
    trace_event,
)
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


def _storage(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr() or None
    except (RuntimeError, NotImplementedError):  # sparse, nested, meta: no plain storage
        return None


def _written(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    """The tensors an op writes into (in-place ``self``, ``out=``): from its schema."""
    schema = getattr(func, "_schema", None)
    found: list[torch.Tensor] = []
    for i, argument in enumerate(getattr(schema, "arguments", ())):
        info = argument.alias_info
        if info is None or not info.is_write:
            continue
        value = args[i] if i < len(args) else kwargs.get(argument.name)
        found += [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]
    return found


class _Tracer(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Digests every op's tensor inputs and outputs while active.

    Memory no op has written yet (the output of ``empty`` and its kin) holds whatever was
    there before: it is digested as :data:`~torchrepro.localize.UNINITIALIZED`, so it
    compares equal, until an op writes into it (``bernoulli_`` into ``empty_like``'s
    output, an ``out=`` argument). An op that reads such memory is noted in its event.
    """

    def __init__(self, tracker: Any) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.tracker = tracker
        self.events: list[dict[str, Any]] = []
        self.pid = os.getpid()
        self.unwritten: dict[int, str] = {}  # storage -> the op that made it, while unwritten

    def _digests(self, tensors: list[torch.Tensor]) -> list[str]:
        storages = [_storage(t) for t in tensors]
        known = [t for t, s in zip(tensors, storages) if s not in self.unwritten]
        digests = iter(_digest_tensors(known, None).hexdigests() if known else [])
        return [UNINITIALIZED if s in self.unwritten else next(digests) for s in storages]

    def __torch_dispatch__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if os.getpid() != self.pid:  # a DataLoader worker forked while tracing
            return func(*args, **kwargs)
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        written = _written(func, args, kwargs)
        written_ids = {id(t) for t in written}
        # Digest inputs before the call: an in-place op overwrites them.
        before = self._digests(inputs)
        read = [
            self.unwritten[s]
            for t in inputs
            if id(t) not in written_ids and (s := _storage(t)) in self.unwritten
        ]
        out = func(*args, **kwargs)
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        name = str(func)
        for t in written:
            self.unwritten.pop(_storage(t) or 0, None)
        input_storages = {_storage(t) for t in inputs}
        for t in outputs:
            storage = _storage(t)
            if storage is None or storage in input_storages:
                continue  # a view of an input: as written as the input is
            if op_base_name(name) in UNINITIALIZED_OPS:
                self.unwritten[storage] = name
            else:
                self.unwritten.pop(storage, None)  # computed into memory freed and reused
        after = self._digests(outputs)
        tracker = self.tracker
        backward = torch._C._current_graph_task_id() != -1
        module = _innermost(tracker.parents) if tracker is not None else OUTSIDE
        phase = "backward" if backward else "forward"
        event = trace_event(name, module, phase, before, after)
        if read:
            event["unwritten"] = read[0]
        self.events.append(event)
        return out


class StepTrace:
    """Turns the tracer on from the end of step ``step - 1`` to the end of step ``step``."""

    def __init__(self, path: Path, step: int) -> None:
        self.path, self.step = path, step
        self.steps_seen = 0
        self.tracker = _module_tracker()
        self.tracer: _Tracer | None = None
        self.done = False
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
        if self.done:
            return
        self.steps_seen += 1
        if self.tracer is not None:
            tracer, self.tracer = self.tracer, None
            tracer.__exit__(None, None, None)  # type: ignore[no-untyped-call]
            if self.tracker is not None:
                self.tracker.__exit__(None, None, None)
            # Not removed here: this may run inside the optimizer's post-hooks, whose dict
            # may not change while they are called. A hook left behind costs a compare.
            self.done = True
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
