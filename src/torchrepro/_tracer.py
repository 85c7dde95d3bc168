"""The op tracer of a localization replay: every ATen op of one step, digested.

Runs in the replayed process: the ``torchrepro run`` bootstrap calls
:func:`start_trace_from_env` when ``TORCHREPRO_TRACE`` names a file and
``TORCHREPRO_TRACE_STEP`` a step. From the end of step ``s - 1`` to the end of step ``s``
a ``TorchDispatchMode`` sees every ATen op and notes its name, the module it ran in
(:mod:`torchrepro._modules`, forward or backward) and exact digests of its tensor inputs
and outputs and of its other arguments; the trace is then written in the layout that
:mod:`torchrepro.localize` reads and analyses (one file per rank under torchrun). Steps are
optimizer steps, or, in a replay that records (:meth:`StepTrace.follow`), the record's
entries, whatever marks them.

Only computed values are compared (:mod:`torchrepro._unwritten`): memory an op of the
empty family made digests as a fixed marker until an op writes it, an argument an op
overwrites without reading it (``bernoulli_``'s ``self``, an ``out=`` tensor) as another;
an op that reads unwritten memory names the op that made it, and an op that draws random
numbers says so.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from torchrepro import _contract, distributed
from torchrepro._files import atomic_text_writer
from torchrepro._modules import Modules
from torchrepro._unwritten import OpInfo, Unwritten, storage_of
from torchrepro.localize import OVERWRITTEN, TRACE_FORMAT, trace_event
from torchrepro.records.files import process_argv, rank_path

__all__ = ["StepTrace", "start_trace_from_env"]


class _Tracer(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Digests every op's tensor inputs and outputs while active."""

    def __init__(self, modules: Modules) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.modules = modules
        self.events: list[dict[str, Any]] = []
        self.pid = os.getpid()
        self.ops: dict[Any, OpInfo] = {}
        self.unwritten = Unwritten()

    def __torch_dispatch__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if os.getpid() != self.pid:  # a DataLoader worker forked while tracing
            return func(*args, **kwargs)
        op = self.ops.get(func)
        if op is None:
            op = self.ops[func] = OpInfo.of(func)
        leaves = tree_flatten((args, kwargs))[0]
        inputs = [t for t in leaves if isinstance(t, torch.Tensor)]
        written = op.written(args, kwargs) if op.writes else []
        overwritten = set() if op.reads_written else {id(t) for t in written}
        # Digest inputs before the call: an in-place op overwrites them.
        digests, sources = self.unwritten.digests([t for t in inputs if id(t) not in overwritten])
        read = iter(digests)
        before = [OVERWRITTEN if id(t) in overwritten else next(read) for t in inputs]
        sizes = [(t, storage_of(t)) for t in written] if op.metadata else []
        grown = [(t, s, s.nbytes()) for t, s in sizes if s is not None]
        out = func(*args, **kwargs)
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if op.makes_unwritten:
            for tensor in outputs:
                self.unwritten.made(tensor, str(func))
        elif not op.metadata:
            for tensor in written:
                self.unwritten.wrote(tensor)
        for tensor, storage, nbytes in grown:  # resize_ may grow a storage: new bytes unwritten
            if storage.nbytes() > nbytes:
                self.unwritten.made(tensor, str(func), keep=nbytes)
        after = self.unwritten.digests(outputs)[0] if outputs else []
        backward = torch._C._current_graph_task_id() != -1
        module, phase = self.modules.innermost(), "backward" if backward else "forward"
        self.events.append(
            trace_event(
                str(func),
                module,
                phase,
                before,
                after,
                arguments=_arguments(leaves),
                unwritten=sources,
                random=op.draws(args, kwargs),
            )
        )
        return out


_PLAIN = (int, float, complex, str, torch.dtype, torch.device, torch.layout, torch.memory_format)


def _arguments(leaves: Sequence[Any]) -> str | None:
    """A digest of an op's numbers, shapes and flags: a value made in Python reaches an op
    as an argument too. Objects (generators, storages, process groups) are left out."""
    plain = [leaf for leaf in leaves if leaf is None or isinstance(leaf, _PLAIN)]
    if not any(leaf is not None for leaf in plain):
        return None
    return hashlib.blake2b(repr(plain).encode(), digest_size=8).hexdigest()


class StepTrace:
    """Turns the tracer on from the end of step ``step - 1`` to the end of step ``step``."""

    def __init__(self, path: Path, step: int) -> None:
        self.path, self.step = path, step
        self.steps_seen = 0
        self.done = False
        self.modules: Modules | None = None
        self.tracer: _Tracer | None = None
        self.handle = register_optimizer_step_post_hook(self._on_step)
        if step == 0:
            self._start()

    def _start(self) -> None:
        self.modules = Modules().__enter__()
        self.tracer = _Tracer(self.modules)
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
        # The optimizer's post-hooks are being iterated here: the hook stays registered
        # (removing it would mutate them mid-iteration) and does nothing once done.
        if self.done:
            return
        self.steps_seen += 1
        if self.tracer is not None:
            tracer, self.tracer = self.tracer, None
            tracer.__exit__(None, None, None)  # type: ignore[no-untyped-call]
            assert self.modules is not None, "started with the tracer"
            self.modules.__exit__()
            self.done = True
            path = rank_path(self.path, distributed.world_size(), distributed.rank())
            _write_trace(path, self.step, tracer.events)
        elif self.steps_seen == self.step:
            self._start()


def _write_trace(path: Path, step: int, events: list[dict[str, Any]]) -> None:
    # Atomic: check waits for the file to appear and reads it at once.
    with atomic_text_writer(path) as file:
        file.write(json.dumps({"format": TRACE_FORMAT, "step": step}) + "\n")
        for event in events:
            file.write(json.dumps(event, separators=(",", ":")) + "\n")


def _same_files(argv: Sequence[str]) -> list[str]:
    """A command line with the files it names made absolute: a launcher that starts the
    other ranks itself (Lightning) names the script by its absolute path."""
    return [os.path.abspath(word) if os.path.isfile(word) else word for word in argv]


def start_trace_from_env() -> StepTrace | None:
    """Starts the step tracer if ``TORCHREPRO_TRACE`` and ``TORCHREPRO_TRACE_STEP`` are set.

    With ``TORCHREPRO_TRACE_ARGV`` (a JSON list) only the processes of that command line
    trace: the training process of a command that ``check`` replays. Under torchrun each
    rank writes its own file (``trace.rank{r}.jsonl``).

    Returns:
        The tracer started, or None.

    Examples:
        >>> os.environ["TORCHREPRO_TRACE"], os.environ["TORCHREPRO_TRACE_STEP"] = "t.jsonl", "1"
        >>> start_trace_from_env()  # doctest: +ELLIPSIS
        <torchrepro._tracer.StepTrace object at ...>
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> for _ in range(2):
        ...     opt.zero_grad(); model(torch.ones(1, 2)).sum().backward(); opt.step()
        >>> from torchrepro.localize import read_trace
        >>> events = read_trace("t.jsonl")  # the ops of step 1
        >>> [(e["op"], e["module"]) for e in events if e["module"] in ("0", "1")][:3]
        [('aten.t.default', '0'), ('aten.addmm.default', '0'), ('aten.empty_like.default', '1')]
        >>> [e["out"] for e in events if e["op"] == "aten.empty_like.default"]  # made, not computed
        [['unwritten']]
        >>> [(e["in"][0], e.get("random")) for e in events if e["op"] == "aten.bernoulli_.float"]
        [('overwritten', True)]
        >>> len(events[-1]["out"][0])  # a 128-bit digest of the last op's output
        32
    """
    path, step = os.environ.get(_contract.TRACE), os.environ.get(_contract.TRACE_STEP)
    if not path or step is None:
        return None
    wanted = os.environ.get(_contract.TRACE_ARGV)
    if wanted and _same_files(json.loads(wanted)) != _same_files(process_argv()):
        return None  # another process of the command: check replays the one that parted
    return StepTrace(Path(path), int(step))
