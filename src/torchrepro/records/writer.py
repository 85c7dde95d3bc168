"""Writing run records: one entry per optimizer step, with exact digests, as it trains.

``record(path)`` hooks every optimizer step in the process (no change to model code) and
appends one JSON line per step: step index, the digest of every parameter (by module path
where a module owning it ran forward, else ``group{g}.{i}``), and optionally gradients, the
batch that went into the outermost module, RNG states and values given to ``log()``. The
file's layout is :mod:`torchrepro.records.format`'s.

Example:
    >>> model = torch.nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> with record("run.jsonl", rng=True) as recorder:
    ...     for _ in range(2):
    ...         loss = model(torch.ones(1, 2)).sum()
    ...         _ = log(loss=loss)
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
import json
import os
import time
import weakref
from dataclasses import dataclass, field
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
from torchrepro.records._capture import (
    LogValue,
    log_value,
    parameter_names,
    rng_digests,
    tensors_in,
)
from torchrepro.records.files import claim_record, rank_path, this_process
from torchrepro.records.format import (
    ALGORITHM,
    BATCH,
    GRADS,
    LOG,
    OPTIMIZER,
    OPTIONS,
    PARAMS,
    REPLICAS,
    RNG,
    STEP,
    header,
)

__all__ = ["LogValue", "Recorder", "log", "record", "start_from_env"]

_active: Recorder | None = None


@dataclass
class _OptimizerInfo:
    index: int
    names: list[str]
    param_count: int
    steps: int = 0


@dataclass
class _PendingEntry:
    entry: dict[str, Any]
    digests: _PendingDigests
    names: list[tuple[str, str]]  # (section, name) for each digest, in order
    logs: dict[str, LogValue]
    batch: list[_PendingDigests] = field(default_factory=list)


class Recorder:
    """An open run record. Made by :func:`record`; close it with :meth:`close` or ``with``.

    Attributes:
        path: The file being written (with the rank inserted when WORLD_SIZE > 1).
        entries: Number of step entries written so far.
        hook_seconds: Host time spent inside torchrepro's hooks: the recorder's overhead.
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
        self.hook_seconds = 0.0
        self._optimizers: weakref.WeakKeyDictionary[torch.optim.Optimizer, _OptimizerInfo] = (
            weakref.WeakKeyDictionary()
        )
        self._modules: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
        self._logs: dict[str, LogValue] = {}
        self._batches: list[_PendingDigests] = []
        self._depth = 0
        self._waiting: _PendingEntry | None = None
        self._closed = False

        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Opened at the first optimizer step: a process that never steps (torchrun's
        # launcher, a data-preparation script) leaves no empty record behind.
        self._file: IO[str] | None = None
        self._handles: list[RemovableHandle] = [
            register_optimizer_step_post_hook(self._on_step),
        ]
        # The pre-hook learns which modules own the parameters (for names); it is removed
        # after the first step unless batches are recorded, so later steps pay nothing.
        self._pre_handle: RemovableHandle | None = register_module_forward_pre_hook(
            self._on_forward_pre
        )
        self._post_handle: RemovableHandle | None = (
            register_module_forward_hook(self._on_forward_post, always_call=True) if batch else None
        )
        atexit.register(self.close)

    # -- hooks -------------------------------------------------------------------------

    def _on_forward_pre(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        self._modules.add(module)
        if self.batch:
            if self._depth == 0:
                t0 = time.perf_counter()
                tensors: list[torch.Tensor] = []
                tensors_in(args, tensors)
                self._batches.append(_digest_tensors(tensors, self.algorithm))
                self.hook_seconds += time.perf_counter() - t0
            self._depth += 1

    def _on_forward_post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        self._depth = max(0, self._depth - 1)

    def _on_step(
        self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        t0 = time.perf_counter()
        if self._file is None:
            self._start_file()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        info = self._optimizers.get(optimizer)
        if info is None or info.param_count != len(params):
            index = info.index if info is not None else len(self._optimizers)
            info = _OptimizerInfo(index, parameter_names(optimizer, self._modules), len(params))
            self._optimizers[optimizer] = info
        tensors = list(params)  # the digest functions read .detach()ed data themselves
        labels = [(PARAMS, name) for name in info.names]
        if self.grads:
            for name, p in zip(info.names, params):
                if p.grad is not None:
                    tensors.append(p.grad)
                    labels.append((GRADS, name))
        digests = _digest_tensors(tensors, self.algorithm)
        entry: dict[str, Any] = {
            STEP: info.steps,
            OPTIMIZER: info.index,
            ALGORITHM: digests.algorithm,
        }
        if self.rng:
            entry[RNG] = rng_digests()
        replicas = distributed.replica_verdict(optimizer)
        if replicas is not None:
            entry[REPLICAS] = replicas
        info.steps += 1
        pending = _PendingEntry(entry, digests, labels, self._logs, self._batches)
        self._logs, self._batches = {}, []
        if self._pre_handle is not None and not self.batch:
            self._pre_handle.remove()
            self._pre_handle = None
        self._submit(pending)
        self.hook_seconds += time.perf_counter() - t0

    # -- writing -----------------------------------------------------------------------

    def _submit(self, pending: _PendingEntry) -> None:
        # Host digests are final now: write at once. Device digests are left to finish while
        # training goes on and written when the next step arrives (or at close), so the
        # record costs no device synchronisation per step.
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

    def _finish(self, pending: _PendingEntry) -> None:
        entry = pending.entry
        digests = pending.digests.hexdigests()
        for (section, name), digest in zip(pending.names, digests):
            entry.setdefault(section, {})[name] = digest
        entry.setdefault(PARAMS, {})
        if self.grads:
            entry.setdefault(GRADS, {})
        if self.batch:
            entry[BATCH] = [b.hexdigests() for b in pending.batch]
        if pending.logs:
            entry[LOG] = {k: log_value(v, self.algorithm) for k, v in pending.logs.items()}
        self._write(entry)
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
            self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
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
        # One write and a flush per line, in the training thread: a crash right after a
        # step keeps that step, and leaves at most one partial line, which read_record drops.
        assert self._file is not None
        self._file.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self._file.flush()

    # -- public ------------------------------------------------------------------------

    def close(self) -> None:
        """Write the entry still in flight, remove the hooks and close the file (idempotent)."""
        global _active
        if self._closed:
            return
        self._closed = True
        for handle in (*self._handles, self._pre_handle, self._post_handle):
            if handle is not None:
                handle.remove()
        try:
            if self._waiting is not None:
                self._finish(self._waiting)
                self._waiting = None
        finally:
            if self._file is not None:
                self._file.close()
            atexit.unregister(self.close)
            if _active is self:
                _active = None

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


def record(
    path: str | os.PathLike[str],
    *,
    grads: bool = False,
    batch: bool = False,
    rng: bool = False,
    algorithm: str | None = None,
) -> Recorder:
    """Start recording every optimizer step of this process to ``path``.

    Use it as a context manager, or call it and ``close()`` the result (it is also closed at
    interpreter exit). The file is overwritten; :mod:`torchrepro.records.format` describes it.

    Args:
        path: The record file (JSON lines). With WORLD_SIZE > 1 the rank is inserted:
            ``run.jsonl`` -> ``run.rank{r}.jsonl``.
        grads: Also digest each parameter's gradient.
        batch: Also digest the tensors passed to the outermost module call(s) of each step
            (positional arguments).
        rng: Also digest, after each step, the state of every RNG source in use: Python,
            numpy, torch, CUDA/MPS/XPU once the training uses them, and the generators
            registered with :func:`torchrepro.register_generator`.
        algorithm: Digest algorithm (see :func:`torchrepro.fingerprint`); ``"lanes"`` on a
            CPU run makes its record comparable with a CUDA run's.

    Returns:
        The running :class:`Recorder`.

    Raises:
        RecordError: if a recording is already active in this process.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> with record("run.jsonl", grads=True) as recorder:
        ...     for _ in range(2):
        ...         opt.zero_grad(); model(torch.ones(1, 2)).sum().backward(); opt.step()
        >>> recorder.entries, recorder.path.read_text().count("\\n")
        (2, 3)
    """
    global _active
    if _active is not None:
        raise RecordError(
            f"a recording to {str(_active.path)!r} is already active; expected none. "
            "Close it (recorder.close() or leave its with-block) before starting another."
        )
    _active = Recorder(path, grads=grads, batch=batch, rng=rng, algorithm=algorithm)
    return _active


def log(**values: LogValue) -> bool:
    """Attach values (a loss, a metric) to the entry of the coming optimizer step.

    Call it before ``optimizer.step()``. Tensors of one element are stored as numbers (read
    when the entry is written, so no extra device sync); larger tensors as digests. Values
    logged after the last step of a recording are not written.

    Returns:
        True if a recording took the values, False if none is active (then it does nothing,
        so training scripts may call it unconditionally).

    Raises:
        RecordError: for a value that is not a number, string or tensor.

    Example:
        >>> log(loss=0.5)  # no recording active: nothing happens
        False
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> with record("run.jsonl"):
        ...     loss = model(torch.ones(1, 2)).sum()
        ...     log(loss=loss, lr=0.1)
        ...     opt.zero_grad(); loss.backward(); opt.step()
        True
        >>> from torchrepro.records import read_record
        >>> sorted(read_record("run.jsonl").entries[0]["log"])
        ['loss', 'lr']
    """
    for key, value in values.items():
        if not isinstance(value, (int, float, bool, str, torch.Tensor)):
            raise RecordError(
                f"log({key}=...) got {type(value).__name__}; expected a number, string or "
                "tensor. Pass e.g. loss.item() or the loss tensor itself."
            )
    if _active is None:
        return False
    _active._logs.update(values)
    return True


def start_from_env() -> Recorder | None:
    """Start recording if ``TORCHREPRO_RECORD`` names a file; the ``run`` bootstrap calls it.

    ``TORCHREPRO_RECORD_WITH`` is a comma list of options to switch on (``grads,batch,rng``)
    and ``TORCHREPRO_RECORD_ALGORITHM`` picks the digest algorithm.

    Returns:
        The Recorder (closed at interpreter exit), or None when the variable is unset.

    Example:
        >>> os.environ["TORCHREPRO_RECORD"] = "run.jsonl"
        >>> os.environ["TORCHREPRO_RECORD_WITH"] = "grads,rng"
        >>> recorder = start_from_env()
        >>> recorder, recorder.grads, recorder.batch
        (<Recorder 'run.jsonl' recording, 0 entries>, True, False)
        >>> recorder.close()
    """
    path = os.environ.get(_contract.RECORD)
    if not path:
        return None
    raw = os.environ.get(_contract.RECORD_WITH, "")
    chosen = {item.strip() for item in raw.split(",") if item.strip()}
    unknown = chosen - set(OPTIONS)
    if unknown:
        raise RecordError(
            f"{_contract.RECORD_WITH}={raw!r} names {sorted(unknown)}; expected a comma list "
            f"of {list(OPTIONS)}. Fix the variable or unset it."
        )
    return record(
        path,
        grads=GRADS in chosen,
        batch=BATCH in chosen,
        rng=RNG in chosen,
        algorithm=os.environ.get(_contract.RECORD_ALGORITHM) or None,
    )
