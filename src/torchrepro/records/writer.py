"""Run records: one entry per optimizer step, with exact digests, written as it trains.

``record(path)`` hooks every optimizer step in the process (no change to model code) and
appends one JSON line per step: step index, the digest of every parameter (by module path
where a module owning it ran forward, else ``group{g}.{i}``), and optionally gradients, the
batch that went into the outermost module, RNG states and values given to ``log()``.

File format (schema version 1), JSON lines, append-only:

* line 1, the header, written at the first optimizer step (no step, no file) so that its
  environment manifest shows what the script set up (threads, flags):
  ``{"format": "torchrepro-record", "schema_version": 1, "rank": 0,
  "world_size": 1, "options": {...}, "env": {...environment manifest...}}``
* then one entry per optimizer step: ``{"step": 0, "optimizer": 0, "algorithm": "xxh3_128",
  "params": {"conv.weight": "<32 hex>", ...}, "grads": {...}, "batch": [...], "rng": {...},
  "log": {"loss": 0.69}}`` (the optional keys only when switched on or used), and
  under DDP, at the steps where the replicas were compared, ``"replicas": {"step": 0,
  "checked": 4, "drifting": [[1, "fc.weight"]]}`` (ranks whose parameter differs from
  rank 0's; see :mod:`torchrepro.distributed`).

Each line is written and flushed as the step ends, so a crash loses at most the step in
flight; ``read_record`` reads a record cut mid-line back to its last complete entry.
With ``WORLD_SIZE`` > 1 each rank writes its own file: ``run.jsonl`` becomes
``run.rank0.jsonl``, ``run.rank1.jsonl``, ...
"""

from __future__ import annotations

import atexit
import json
import os
import random
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Union

import torch
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.hooks import RemovableHandle

from torchrepro import distributed
from torchrepro.env import environment
from torchrepro.errors import RecordError
from torchrepro.fingerprint import _digest_tensors, _PendingDigests, fingerprint

__all__ = [
    "FORMAT",
    "SCHEMA_VERSION",
    "Record",
    "Recorder",
    "log",
    "rank_path",
    "read_record",
    "record",
    "start_from_env",
]

FORMAT = "torchrepro-record"
# Bump when the entry layout or any digest algorithm changes: old records stay readable
# only by the version that wrote them, and diff refuses to compare across versions.
SCHEMA_VERSION = 1
_OPTIONS = ("grads", "batch", "rng")

LogValue = Union[int, float, bool, str, torch.Tensor]

_active: Recorder | None = None


def rank_path(path: str | os.PathLike[str], world_size: int, rank: int) -> Path:
    """The file a rank writes: ``path`` itself for one process, else ``stem.rank{r}.suffix``.

    Example:
        >>> str(rank_path("runs/a.jsonl", 4, 2))
        'runs/a.rank2.jsonl'
    """
    p = Path(path)
    if world_size <= 1:
        return p
    return p.with_name(f"{p.stem}.rank{rank}{p.suffix}")


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


def _tensors_in(obj: Any, out: list[torch.Tensor]) -> None:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _tensors_in(item, out)
    elif isinstance(obj, Mapping):
        for key in obj:
            _tensors_in(obj[key], out)


def _rng_digests() -> dict[str, str]:
    """Digests of the global RNG states (host-side, small)."""
    import numpy as np

    out = {"torch": str(fingerprint(torch.get_rng_state()))}
    # Reading CUDA generators is only safe and meaningful once CUDA is in use.
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda:{i}"] = str(fingerprint(state))
    _, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    numpy_state = {
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "gauss": (has_gauss, gauss),
    }
    out["numpy"] = str(fingerprint(numpy_state))
    version, internal, gauss_next = random.getstate()
    out["python"] = str(
        fingerprint({"v": version, "state": torch.tensor(internal), "gauss": gauss_next})
    )
    return out


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
        # Provisional (from torchrun's variables); fixed at the first step, when a process
        # group started by other means (mp.spawn) is known too.
        world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
        self.path = rank_path(path, world_size, rank)
        self._options = {"grads": grads, "batch": batch, "rng": rng, "algorithm": algorithm}
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
                _tensors_in(args, tensors)
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
            info = _OptimizerInfo(index, self._names(optimizer), len(params))
            self._optimizers[optimizer] = info
        tensors = list(params)  # the digest functions read .detach()ed data themselves
        labels = [("params", name) for name in info.names]
        if self.grads:
            for name, p in zip(info.names, params):
                if p.grad is not None:
                    tensors.append(p.grad)
                    labels.append(("grads", name))
        digests = _digest_tensors(tensors, self.algorithm)
        entry: dict[str, Any] = {
            "step": info.steps,
            "optimizer": info.index,
            "algorithm": digests.algorithm,
        }
        if self.rng:
            entry["rng"] = _rng_digests()
        replicas = distributed.replica_verdict(optimizer)
        if replicas is not None:
            entry["replicas"] = replicas
        info.steps += 1
        pending = _PendingEntry(entry, digests, labels, self._logs, self._batches)
        self._logs, self._batches = {}, []
        if self._pre_handle is not None and not self.batch:
            self._pre_handle.remove()
            self._pre_handle = None
        self._submit(pending)
        self.hook_seconds += time.perf_counter() - t0

    def _names(self, optimizer: torch.optim.Optimizer) -> list[str]:
        """Module-path names for an optimizer's parameters, from modules that ran forward."""
        wanted: dict[int, int] = {}
        fallback: list[str] = []
        for g, group in enumerate(optimizer.param_groups):
            for i, p in enumerate(group["params"]):
                wanted[id(p)] = len(fallback)
                fallback.append(f"group{g}.{i}")
        names: list[str | None] = [None] * len(fallback)
        modules = list(self._modules)
        inner = {id(sub) for m in modules for sub in m.modules() if sub is not m}
        # Outermost modules give full paths ("encoder.0.weight"), whichever order they ran in.
        roots = [m for m in modules if id(m) not in inner]
        roots.sort(key=lambda m: (-sum(1 for _ in m.parameters()), type(m).__qualname__))
        used: set[str] = set()
        for root in roots:
            for name, p in root.named_parameters():
                slot = wanted.get(id(p))
                if slot is not None and names[slot] is None and name not in used:
                    names[slot] = name
                    used.add(name)
        return [n if n is not None else f for n, f in zip(names, fallback)]

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
        entry.setdefault("params", {})
        if self.grads:
            entry.setdefault("grads", {})
        if self.batch:
            entry["batch"] = [b.hexdigests() for b in pending.batch]
        if pending.logs:
            entry["log"] = {k: _log_value(v, self.algorithm) for k, v in pending.logs.items()}
        self._write(entry)
        self.entries += 1

    def _start_file(self) -> None:
        # The header is written at the first step, not at start: the manifest then shows
        # what the script set up before training (thread counts, determinism flags).
        manifest = environment()
        self.path = rank_path(self._requested, manifest["world_size"], manifest["rank"])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # "w": a record describes one run; appending a second run would interleave two.
        self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
        self._write(
            {
                "format": FORMAT,
                "schema_version": SCHEMA_VERSION,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "rank": manifest["rank"],
                "world_size": manifest["world_size"],
                "options": self._options,
                "env": manifest,
            }
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


def _log_value(value: LogValue, algorithm: str | None) -> Any:
    if isinstance(value, torch.Tensor):
        if value.numel() == 1:
            return value.detach().item()
        return str(fingerprint(value, algorithm=algorithm))
    return value


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
    interpreter exit). The file is overwritten; see the module docstring for its format.

    Args:
        path: The record file (JSON lines). With WORLD_SIZE > 1 the rank is inserted:
            ``run.jsonl`` -> ``run.rank{r}.jsonl``.
        grads: Also digest each parameter's gradient.
        batch: Also digest the tensors passed to the outermost module call(s) of each step
            (positional arguments).
        rng: Also digest the torch, CUDA, numpy and Python RNG states after each step.
        algorithm: Digest algorithm (see :func:`torchrepro.fingerprint`); ``"lanes"`` on a
            CPU run makes its record comparable with a CUDA run's.

    Returns:
        The running :class:`Recorder`.

    Raises:
        RecordError: if a recording is already active in this process.

    Example:
        >>> with torchrepro.record("run.jsonl"):
        ...     for x, y in loader:
        ...         loss = loss_fn(model(x), y)
        ...         torchrepro.log(loss=loss)
        ...         opt.zero_grad(); loss.backward(); opt.step()
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
        >>> torchrepro.log(loss=loss, lr=0.1)
        True
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
        >>> start_from_env()
        <Recorder 'run.jsonl' recording, 0 entries>
    """
    path = os.environ.get("TORCHREPRO_RECORD")
    if not path:
        return None
    raw = os.environ.get("TORCHREPRO_RECORD_WITH", "")
    chosen = {item.strip() for item in raw.split(",") if item.strip()}
    unknown = chosen - set(_OPTIONS)
    if unknown:
        raise RecordError(
            f"TORCHREPRO_RECORD_WITH={raw!r} names {sorted(unknown)}; expected a comma list of "
            f"{list(_OPTIONS)}. Fix the variable or unset it."
        )
    return record(
        path,
        grads="grads" in chosen,
        batch="batch" in chosen,
        rng="rng" in chosen,
        algorithm=os.environ.get("TORCHREPRO_RECORD_ALGORITHM") or None,
    )


@dataclass(frozen=True)
class Record:
    """A run record read back: its header, its step entries, and whether it was cut short.

    Attributes:
        path: Where it was read from.
        header: The header line (format, schema version, rank, options, env manifest).
        entries: One dict per optimizer step, in the order they were written.
        truncated: True if the file ended in a partial line (a crash mid-write).
    """

    path: str
    header: dict[str, Any]
    entries: list[dict[str, Any]]
    truncated: bool = False

    @property
    def env(self) -> dict[str, Any]:
        """The environment manifest of the recorded process."""
        env: dict[str, Any] = self.header.get("env", {})
        return env


def read_record(path: str | os.PathLike[str]) -> Record:
    """Read a run record, up to its last complete entry.

    Args:
        path: A file written by :func:`record`.

    Returns:
        The :class:`Record`.

    Raises:
        RecordError: if the file is empty, its header is not a torchrepro header, its schema
            version is not this library's, or a complete line in the middle is corrupt.

    Example:
        >>> rec = read_record("run.jsonl")
        >>> rec.entries[0]["params"]["fc.weight"]
        '3f0c...'
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecordError(
            f"cannot read record {str(p)!r}: {e}; expected a JSON-lines file written by "
            "torchrepro.record. Check the path."
        ) from e
    lines = text.split("\n")
    # A file that does not end in a newline was cut mid-write: its last line is partial.
    tail = lines.pop()
    header_line = lines[0] if lines else tail
    try:
        header = json.loads(header_line)
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise RecordError(
            f"{str(p)!r} does not start with a torchrepro record header; got "
            f"{header_line[:80]!r}; expected a JSON object with format={FORMAT!r}. "
            "Pass a file written by torchrepro.record."
        )
    version = header.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RecordError(
            f"{str(p)!r} has record schema version {version!r}; expected {SCHEMA_VERSION}. "
            "Read it with the torchrepro version that wrote it, or record the run again."
        )
    entries: list[dict[str, Any]] = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordError(
                f"{str(p)!r} line {number} is corrupt ({e.msg}); expected one JSON entry per "
                "line. Only the last line may be partial; the file was modified or mixed."
            ) from e
        if not isinstance(entry, dict) or "step" not in entry:
            raise RecordError(
                f"{str(p)!r} line {number} is not a step entry; got {line[:80]!r}; expected "
                'an object with "step". The file was modified or mixed.'
            )
        entries.append(entry)
    truncated = False
    if tail and lines:
        try:
            entry = json.loads(tail)
        except json.JSONDecodeError:
            entry = None
        if isinstance(entry, dict) and "step" in entry:
            entries.append(entry)
        else:
            truncated = True
    return Record(str(p), header, entries, truncated)
