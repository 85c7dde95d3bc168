"""Writing run records: one entry per training step, with exact digests, as it trains.

``record(path)`` hooks the training in this process (no change to model code) and appends
one JSON line per step: step index, the digest of every parameter after the step (by
module path where a module owning it ran forward, else ``group{g}.{i}``), and optionally
gradients, the batches the data pipeline yielded for the step (:mod:`._batches`), RNG
states and values given to ``log()``. The file's layout is :mod:`torchrepro.records.format`'s.

What a step is, with no code change:

* Each ``optimizer.step()`` of a ``torch.optim.Optimizer``. The entry holds that
  optimizer's parameters; from a process's first optimizer step on, nothing else is a step,
  so a training with an optimizer gets exactly one entry per optimizer step.
* Until then, a backward pass through the output of an outermost module call after which
  the parameters change with no optimizer step: a hand-written update such as
  ``p.data.add_(p.grad, alpha=-lr)``. Its end is seen as DDP sees it (an autograd engine
  callback queued from a hook on the module's output); whether the parameters changed is
  seen when the next outermost module call starts (or at close), and the entry is written
  then: the parameters of the modules that ran forward after the update, the gradients as
  the backward pass left them, ``"optimizer": null``. A backward pass after which no
  parameter changed (a micro-batch of gradient accumulation, a gradient penalty) is no
  step: its batch and logged values go to the next entry. An optimizer step takes over the
  backward pass before it, so no step is written twice.
* :func:`step`, for loops no hook can see (no backward pass, updates outside autograd):
  each call ends a step, and writes its entry unless an optimizer step or a backward pass
  already wrote one since the last call, so marking the steps of a training that the
  recorder sees anyway changes nothing.

``torch.compile``: the hooks do nothing while dynamo traces them (no Python side effects in
a graph). A compiled model's wrapper is called eagerly, so its batch and the end of its
backward pass are seen; its parameters are named by the module paths of the model it wraps,
as in the plain model. A model compiled in place (``model.compile()``) or inside a compiled
function runs no hook outside the graph: its parameters are named ``group{g}.{i}`` and its
batch is recorded only from a DataLoader.

Examples:
    >>> model = torch.nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> with torchrepro.record("run.jsonl", rng=True) as recorder:
    ...     for _ in range(2):
    ...         loss = model(torch.ones(1, 2)).sum()
    ...         _ = torchrepro.log(loss=loss)
    ...         opt.zero_grad(); loss.backward(); opt.step()
    >>> recorder
    <Recorder 'run.jsonl' closed, 2 entries>
    >>> from torchrepro.records import read_record
    >>> entry = read_record("run.jsonl").entries[1]
    >>> sorted(entry["rng"]), sorted(entry["log"])
    (['numpy', 'python', 'torch'], ['loss'])
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import torch
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.hooks import RemovableHandle

from torchrepro import _contract, distributed
from torchrepro.digests import _digest_tensors, _PendingDigests
from torchrepro.env import environment
from torchrepro.errors import RecordError
from torchrepro.records._batches import BatchCapture
from torchrepro.records._capture import (
    LogValue,
    module_parameters,
    parameter_names,
    rng_digests,
    tensors_in,
    unwrapped,
)
from torchrepro.records._entries import Backward, PendingEntry, Plan, entry_line
from torchrepro.records._stats import PendingStats
from torchrepro.records.files import (
    claim_record,
    incomplete_path,
    open_own_record,
    rank_path,
    this_process,
)
from torchrepro.records.format import BATCH, GRADS, REPLICAS, RNG, header

__all__ = ["LogValue", "Recorder"]

# True while dynamo traces a function (torch >= 2.3 names it in torch.compiler).
_is_compiling: Callable[[], bool] = getattr(
    getattr(torch, "compiler", None), "is_compiling", lambda: False
)
# One encoder for every line, not one per json.dumps call.
_encode = json.JSONEncoder(separators=(",", ":")).encode
# OptimizedModule warns that global hooks fire once more for it: the recorder expects that
# (the wrapper is the outermost call, and it is named through the model it wraps).
_COMPILE_HOOK_WARNING = r"Using `torch\.compile\(module\)` when there are global hooks"


class Recorder:
    """An open run record. Made by :func:`record`; close it with :meth:`close` or ``with``.

    Attributes:
        path: The file being written (with the rank inserted when WORLD_SIZE > 1).
        entries: Number of step entries written so far.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        grads: bool = False,
        batch: bool = False,
        rng: bool = False,
        algorithm: str | None = None,
    ) -> None:
        self._requested = Path(path)
        # Provisional (torchrun's variables); fixed at the first step, when a process group
        # started by other means (mp.spawn) is known too.
        self.path = rank_path(path, distributed.world_size(), distributed.rank())
        self._options = {GRADS: grads, BATCH: batch, RNG: rng, "algorithm": algorithm}
        self.grads, self.batch, self.rng, self.algorithm = grads, batch, rng, algorithm
        self.entries = 0
        self._seconds = 0.0
        self._plans: weakref.WeakKeyDictionary[torch.optim.Optimizer, Plan] = (
            weakref.WeakKeyDictionary()
        )
        self._optimizers_seen = 0
        # The outermost modules that ran forward: they name the parameters.
        self._roots: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
        self._module_plan: Plan | None = None  # the roots' parameters; None: roots changed
        self._logs: dict[str, LogValue] = {}
        self._batches = BatchCapture(algorithm, on=batch)
        self._depth = 0
        self._steps = 0  # steps that were no optimizer's (backward passes, step() calls)
        self._optimizer_stepped = False
        self._compiled = False  # a torch.compile wrapper ran: its graphs guard on our hooks
        self._submitted = 0  # entries handed to _submit, written or waiting for the device
        self._submitted_at_mark = 0  # ... when step() was last called
        self._backward: Backward | None = None
        self._graph_task = -1  # the backward pass whose end is already awaited
        self._listeners: list[Callable[[], None]] = []
        self._waiting: PendingEntry | None = None
        self._closed = False

        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Opened at the first step: a process that never steps (torchrun's launcher, a
        # data-preparation script) leaves no empty record behind.
        self._file: IO[str] | None = None
        self._handles: list[RemovableHandle] = [
            register_optimizer_step_post_hook(self._on_step),
        ]
        # The forward hooks learn which modules own the parameters (for names), the batch,
        # and where backward passes start; once an optimizer has stepped they are removed
        # unless batches are recorded or a model is compiled, so later steps pay nothing.
        self._forward_handles: list[RemovableHandle] = [
            register_module_forward_pre_hook(self._on_forward_pre),
            register_module_forward_hook(self._on_forward_post, always_call=True),
        ]
        warnings.filterwarnings("ignore", _COMPILE_HOOK_WARNING, UserWarning)
        self._warning_filter = warnings.filters[0]
        atexit.register(self.close)

    # -- hooks -------------------------------------------------------------------------

    def _on_forward_pre(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if _is_compiling() or self._closed:
            return  # traced into a graph: the wrapper's eager call saw this forward
        if self._depth == 0:
            t0 = time.perf_counter()
            if self._backward is not None:
                self._settle()  # the update after that backward pass is done by now
            if module not in self._roots:
                self._roots.add(module)
                self._module_plan = None
                self._compiled = self._compiled or unwrapped(module) is not module
            if self.batch:
                self._batches.on_call(module, args)
            self._seconds += time.perf_counter() - t0
        self._depth += 1

    def _on_forward_post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if _is_compiling() or self._closed:
            return
        self._depth = max(0, self._depth - 1)
        if self._depth == 0 and self._watching() and torch.is_grad_enabled():
            if torch._C._are_functorch_transforms_active():
                return  # torch.func's tensors take no hooks; its passes are not watched
            tensors: list[torch.Tensor] = []
            tensors_in(output, tensors)
            for t in tensors:
                if t.requires_grad:
                    t.register_hook(self._on_output_grad)  # type: ignore[no-untyped-call]

    def _on_output_grad(self, grad: torch.Tensor) -> None:
        # Called inside the backward pass: queue one callback for its end, as DDP does.
        task = torch._C._current_graph_task_id()
        if task != self._graph_task and self._watching():
            self._graph_task = task
            torch.autograd.Variable._execution_engine.queue_callback(self._on_backward_end)

    def _on_backward_end(self) -> None:
        if not self._watching():
            return
        t0 = time.perf_counter()
        if self._backward is not None:
            self._settle()  # two backward passes with no module call between them
        plan = self._modules_plan()
        grads = []
        if self.grads:
            grads = [(k, p.grad) for k, p in zip(plan.keys, plan.tensors) if p.grad is not None]
        digests = _digest_tensors(
            [*plan.tensors, *(g for _, g in grads)], self.algorithm, shards=True
        )
        done = list(digests.hexdigests())  # compared when the next module call starts
        n = len(plan.tensors)
        self._backward = Backward(
            plan,
            done[:n],
            [(k, d) for (k, _), d in zip(grads, done[n:])],
            digests.algorithm,
            rng_digests() if self.rng else None,
            self._logs,
            self._batches.take(),
        )
        self._logs = {}
        self._seconds += time.perf_counter() - t0

    def _on_step(
        self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if self._closed:
            return
        t0 = time.perf_counter()
        if not self._optimizer_stepped:
            self._optimizer_stepped = True
            self._give_back()  # the backward pass before this step was part of it
            # Removing the hooks would make dynamo recompile every graph traced with them.
            if not (self.batch or self._compiled):
                self._remove_forward_hooks()
        self._optimizer_entry(optimizer)
        self._seconds += time.perf_counter() - t0

    # -- steps -------------------------------------------------------------------------

    def _watching(self) -> bool:
        """Whether backward passes may be steps: no optimizer step yet."""
        return not (self._optimizer_stepped or self._closed)

    def _optimizer_entry(self, optimizer: torch.optim.Optimizer) -> None:
        groups = optimizer.param_groups
        params = groups[0]["params"]  # one group, the common case: its own list, no copy
        if len(groups) > 1:
            params = [p for group in groups for p in group["params"]]
        plan = self._plans.get(optimizer)
        if plan is None:
            plan = self._plans[optimizer] = Plan(self._optimizers_seen)
            self._optimizers_seen += 1
        if len(plan.names) != len(params):  # its first step, or a group was added
            plan.rename(parameter_names(optimizer, self._roots))
        if self._listeners:
            self._notify()
        replicas = distributed.replica_verdict(optimizer)
        self._submit(self._entry(plan, params, plan.steps, replicas))
        plan.steps += 1

    def _modules_plan(self) -> Plan:
        """The parameters of the modules that ran forward (rebuilt when another one runs)."""
        if self._module_plan is None:
            named = module_parameters(self._roots)
            self._module_plan = Plan(None, [n for n, _ in named], [p for _, p in named])
        return self._module_plan

    def _entry(
        self,
        plan: Plan,
        params: Sequence[torch.Tensor],
        step: int,
        replicas: dict[str, Any] | None = None,
    ) -> PendingEntry:
        """The entry of a step that ends now: the parameters' digests and what came with them."""
        tensors, keys = params, plan.keys
        if self.grads:
            grads = [(k, p.grad) for k, p in zip(plan.keys, params) if p.grad is not None]
            tensors = [*params, *(g for _, g in grads)]
            keys = [*keys, *(k for k, _ in grads)]
        digests = _digest_tensors(tensors, self.algorithm, shards=True)
        taken: dict[str, Any] = {}
        if self.rng:
            taken[RNG] = rng_digests()
        if replicas is not None:
            taken[REPLICAS] = replicas
        batches = self._batches.take()
        pending = PendingEntry(
            step,
            plan.index,
            digests,
            keys,
            len(params),
            self._logs,
            batches,
            taken,
            PendingStats(tensors),
        )
        self._logs = {}
        return pending

    def _settle(self) -> None:
        """The backward pass waiting was a step if the parameters changed since its end."""
        waiting, self._backward = self._backward, None
        assert waiting is not None
        plan = waiting.plan
        after = _digest_tensors(plan.tensors, self.algorithm, shards=True).hexdigests()
        if after == waiting.before:
            self._give_back(waiting)
            return
        self._notify()
        digests = _PendingDigests.of(waiting.algorithm, [*after, *(d for _, d in waiting.grads)])
        keys = [*plan.keys, *(k for k, _ in waiting.grads)]
        taken = {RNG: waiting.rng} if waiting.rng is not None else {}
        entry = PendingEntry(
            self._steps, None, digests, keys, len(after), waiting.logs, waiting.batch, taken
        )
        self._steps += 1
        self._submit(entry)

    def _give_back(self, waiting: Backward | None = None) -> None:
        """A backward pass that was no step of its own: its batch and logs go to the next."""
        if waiting is None:
            waiting, self._backward = self._backward, None
        if waiting is not None:
            self._batches.give_back(waiting.batch)
            self._logs = {**waiting.logs, **self._logs}

    def _mark(self) -> None:
        """The end of a step, as :func:`step` marks it: written now unless already written."""
        if self._closed:
            return
        t0 = time.perf_counter()
        if self._backward is not None:
            self._settle()  # a hand-written update before step(): that backward pass's step
        if self._submitted == self._submitted_at_mark:
            self._notify()
            plan = self._modules_plan()
            self._submit(self._entry(plan, plan.tensors, self._steps))
            self._steps += 1
        self._submitted_at_mark = self._submitted
        self._seconds += time.perf_counter() - t0

    def add_step_listener(self, listener: Callable[[], None]) -> None:
        """Calls ``listener()`` at the end of each step, before its entry is digested.

        The op tracer of a localization replay follows the steps this way, whatever marks them.
        """
        self._listeners.append(listener)

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    def _remove_forward_hooks(self) -> None:
        for handle in self._forward_handles:
            handle.remove()
        self._forward_handles = []

    # -- writing -----------------------------------------------------------------------

    def _submit(self, pending: PendingEntry) -> None:
        try:
            self._write_entries(pending)
        except (OSError, RecordError) as error:
            self._stop(error)

    def _stop(self, error: Exception) -> None:
        """Stops recording after an I/O error, loudly, and lets the training go on."""
        reason = f"{type(error).__name__}: {error}"
        with contextlib.suppress(OSError):  # a full disk may still take an empty file
            with open(incomplete_path(self.path), "w", encoding="utf-8") as file:
                file.write(f"stopped after {self.entries} entries: {reason}\n")
        warnings.warn(
            f"torchrepro: recording to {str(self.path)!r} stopped after {self.entries} "
            f"entries ({reason}); the training goes on, unrecorded. The record is "
            "incomplete: fix the cause (disk space, permissions, a path of its own) and "
            "record again.",
            RuntimeWarning,
            stacklevel=2,
        )
        self._waiting = None
        # The hooks stay, doing nothing, until close(): this may run inside the optimizer's
        # post-hooks, whose dict may not change while they are called.
        self._batches.close()
        self._close_file()

    def _write_entries(self, pending: PendingEntry) -> None:
        # Host digests are final now: write at once. Device digests are left to finish while
        # training goes on and written when the next step arrives (or at close), so the
        # record costs no device synchronisation per step.
        if self._file is None:
            self._start_file()
        self._submitted += 1
        if self._waiting is not None:
            self._finish(self._waiting)
            self._waiting = None
        if pending.digests.on_host and all(b.on_host for b in pending.batch):
            self._finish(pending)
        else:
            pending.digests.start_transfer()
            for b in pending.batch:
                b.start_transfer()
            self._waiting = pending

    def _finish(self, pending: PendingEntry) -> None:
        self._write_line(entry_line(pending, self.grads, self.batch, self.algorithm))
        self.entries += 1

    def _start_file(self) -> None:
        # The header is written at the first step, not at start: the manifest then shows
        # what the script set up before training (thread counts, determinism flags).
        manifest = environment()
        world_size, rank = distributed.world_size(), distributed.rank()
        self._requested.parent.mkdir(parents=True, exist_ok=True)
        inherited = os.environ.get(_contract.RECORD)
        if inherited and Path(inherited) == self._requested:
            # The run's path, which every Python process of the command inherits: each one
            # that trains claims a file of its own beside it, so two trainings of one
            # command (one after the other, or at once) never write over each other.
            self.path, self._file = claim_record(self._requested, world_size, rank)
        else:
            # A path this process chose: "w", a record describes one run of it.
            self.path = rank_path(self._requested, world_size, rank)
            self._file = open_own_record(self.path)
        created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._write(
            header(
                rank=rank,
                world_size=world_size,
                options=self._options,
                env=manifest,
                created=created,
                process=this_process(),
            )
        )

    def _write(self, obj: dict[str, Any]) -> None:
        self._write_line(_encode(obj) + "\n")

    def _write_line(self, line: str) -> None:
        # One write per line, straight to the file (nothing is buffered, nothing to flush),
        # in the training thread: a crash right after a step keeps that step, and leaves at
        # most one partial line, which read_record drops.
        assert self._file is not None
        data, fd = line.encode(), self._file.fileno()
        while data:
            data = data[os.write(fd, data) :]

    # -- public ------------------------------------------------------------------------

    def close(self) -> None:
        """Write the entries still in flight, remove the hooks and close the file (idempotent)."""
        if not self._closed:
            try:
                if self._backward is not None:
                    self._settle()  # the last hand-written update is done
                if self._waiting is not None:
                    waiting, self._waiting = self._waiting, None
                    try:
                        self._finish(waiting)
                    except OSError as error:
                        self._stop(error)
            finally:
                self._close_file()
        self._batches.close()
        for handle in (*self._handles, *self._forward_handles):
            handle.remove()
        self._handles, self._forward_handles = [], []
        if self._warning_filter in warnings.filters:
            warnings.filters.remove(self._warning_filter)  # type: ignore[attr-defined]
        atexit.unregister(self.close)

    def _close_file(self) -> None:
        self._closed = True
        if self._file is not None:
            with contextlib.suppress(OSError):  # what could be written, was
                self._file.close()
            self._file = None

    @property
    def hook_seconds(self) -> float:
        """Host time spent inside torchrepro's hooks: the recorder's overhead."""
        return self._seconds + self._batches.seconds

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return self._closed

    def log(self, values: dict[str, LogValue]) -> None:
        """Attaches values to the entry of the coming step (see :func:`~torchrepro.log`)."""
        self._logs.update(values)

    def mark_step(self) -> None:
        """Ends a step here (see :func:`~torchrepro.step`)."""
        self._mark()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "recording"
        return f"<Recorder {str(self.path)!r} {state}, {self.entries} entries>"
