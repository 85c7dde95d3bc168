"""The batches of a record's steps: what the data pipeline yielded, given to the step it trained.

Where a batch comes from: while a recording takes batches (``record(batch=True)``), every
DataLoader iterator reports what it yields, digested right away (on the host, where a
loader's batches are). The hooks are installed at the first such recording and do nothing
when none is open: one test per batch and per DataLoader created.

Frameworks fetch ahead of what they train: Lightning's ``_PrefetchDataFetcher`` (for loaders
of unknown length), accelerate's ``DataLoaderShard`` (one batch ahead, to know the last
one), its ``DataLoaderDispatcher`` and ``SkipDataLoader`` (the batches a resumed epoch skips).
What such an object fetched is *held* by it until it hands a batch over, and then that batch
goes on: the one whose first tensor is the first tensor handed over, else the first it
fetched (after the ones it skips). So a prefetch shifts no batch to another step.

Which step a batch belongs to: a batch handed over is *pending* until an outermost call of
a module that owns parameters (the model, never a loss module) takes it, a training call:
gradients on, or the module in training mode (a ``no_grad`` training loop trains too). A
call of a module in eval mode under ``no_grad`` (an evaluation pass) takes nothing; the
pending batches it saw are dropped when the next batch comes. A step's entry holds what its
calls took, in order (each micro-batch of gradient accumulation); a step with no call (a
functional training) takes the pending batches at its end.

No DataLoader (tensors fed by hand): a training call that finds no batch pending, and none
taken from a loader in its step, records its positional arguments as the batch
(``batch 8x4 float32`` for one tensor, ``batch[0] ...`` for several), but not tensors
computed with gradients (another module's output, as in ``head(backbone(x))``).

Not seen: a loader iterated in another thread (its batches go on as they are yielded), a
framework object made before its framework's module was imported into this process while
recording (it holds nothing), keyword arguments of a call fed by hand (module hooks do not
get them), values in a batch that are no tensors.

Examples:
    >>> from torch.utils.data import DataLoader
    >>> capture = BatchCapture(None)
    >>> model = torch.nn.Linear(2, 1)
    >>> for x in DataLoader(torch.ones(4, 2), batch_size=2):
    ...     capture.on_call(model, (x * 2,))  # what the model got is no loader's batch
    ...     print([batch.labels for batch in capture.take()])
    [['batch 2x2 float32']]
    [['batch 2x2 float32']]
    >>> capture.close()
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _BaseDataLoaderIter

from torchrepro.digests import _digest_tensors, _PendingDigests
from torchrepro.records._capture import digestible, labelled_tensors

__all__ = ["Batch", "BatchCapture"]

# What one fetching object, or the pending list, keeps at most, whatever becomes of it.
_MOST_HELD = 64
# The objects of prefetching frameworks: (module, class, method, what the method does).
# "iterate": a generator that fetches ahead and hands over each batch it yields; "collect":
# one fetch, whatever it takes from its loaders is one batch; "prefetch": fetches ahead and
# hands over nothing; "hand-over": fetches and hands over one batch.
_FETCHERS = [
    *(
        ("accelerate.data_loader", name, "__iter__", "iterate")
        for name in ("DataLoaderShard", "DataLoaderDispatcher", "SkipDataLoader")
    ),
    ("accelerate.data_loader", "DataLoaderDispatcher", "_fetch_batches", "collect"),
    *(
        (f"{package}.loops.fetchers", *hook)
        for package in ("pytorch_lightning", "lightning.pytorch")
        for hook in (
            ("_DataFetcher", "__next__", "collect"),
            ("_PrefetchDataFetcher", "__iter__", "prefetch"),
            ("_PrefetchDataFetcher", "__next__", "hand-over"),
        )
    ),
]


@dataclass
class Batch:
    """One batch as an entry records it: each tensor's label, and the digests of the tensors."""

    labels: list[str]
    digests: _PendingDigests
    first: torch.Tensor | None  # its first tensor, by which a hand-over is recognised
    undigested: list[str]  # labels of tensors with no plain data (sparse, nested, meta)

    @property
    def on_host(self) -> bool:
        return self.digests.on_host

    def start_transfer(self) -> None:
        self.digests.start_transfer()

    def value(self) -> dict[str, str]:
        """What the record holds: label -> digest (``"not digested"`` for no plain data)."""
        found = dict(zip(self.labels, self.digests.hexdigests()))
        return {**found, **dict.fromkeys(self.undigested, "not digested")}


class _Collect:
    """One fetch: the batches its loaders yielded, handed on as one."""

    __slots__ = ("group",)

    def __init__(self) -> None:
        self.group: list[Batch] = []

    def add(self, group: list[Batch]) -> None:
        self.group.extend(group)


class _Hold:
    """An object that fetches ahead: what it fetched and has not handed over yet."""

    __slots__ = ("groups", "skip")

    def __init__(self, skip: int = 0) -> None:
        self.groups: deque[list[Batch]] = deque(maxlen=_MOST_HELD)
        self.skip = skip

    def add(self, group: list[Batch]) -> None:
        self.groups.append(group)

    def hand_over(self, item: Any) -> None:
        groups = self.groups
        if not groups:
            return
        first = _first_tensor(item)
        found = next((i for i, g in enumerate(groups) if g[0].first is first), None)
        drop = min(self.skip, len(groups) - 1) if found is None or first is None else found
        self.skip = 0
        for _ in range(drop):
            groups.popleft()
        _pass_up(groups.popleft())


_active: BatchCapture | None = None
_local = threading.local()  # .stack: the fetching objects at work in this thread, innermost last
_installed = False


def _stack() -> list[_Collect | _Hold]:
    stack: list[_Collect | _Hold] | None = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def _within(context: _Collect | _Hold, call: Callable[..., Any], *args: Any) -> Any:
    stack = _stack()
    stack.append(context)
    try:
        return call(*args)
    finally:
        stack.pop()


def _pass_up(group: list[Batch]) -> None:
    """A batch goes on: to the fetching object at work around it, else to the training code."""
    stack = _stack()
    if stack:
        stack[-1].add(group)
    elif _active is not None:
        _active.deliver(group)


def _first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, Mapping):
        obj = obj.values()
    elif not isinstance(obj, (list, tuple)):
        return None
    for item in obj:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


class _HeldIterator:
    """A fetching generator's batches, each handed over as the generator yields it."""

    def __init__(self, inner: Iterator[Any], hold: _Hold) -> None:
        self._inner, self._hold = inner, hold

    def __iter__(self) -> _HeldIterator:
        return self

    def __next__(self) -> Any:
        item = _within(self._hold, next, self._inner)
        self._hold.hand_over(item)
        return item

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _hold_of(fetcher: Any) -> _Hold:
    hold: _Hold | None = fetcher.__dict__.get("_torchrepro_hold")
    if hold is None:
        hold = fetcher.__dict__["_torchrepro_hold"] = _Hold()
    return hold


def _wrap(original: Callable[..., Any], kind: str) -> Callable[..., Any]:
    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _active is None:
            return original(self, *args, **kwargs)
        if kind == "iterate":
            return _HeldIterator(original(self), _Hold(getattr(self, "skip_batches", 0) or 0))
        if kind == "collect":
            context = _Collect()
            try:
                return _within(context, original, self, *args, **kwargs)
            finally:
                if context.group:
                    _pass_up(context.group)
        hold = _hold_of(self)
        if kind == "prefetch":
            hold.groups.clear()  # a new epoch: what was fetched before is dropped
            return _within(hold, original, self)
        item = _within(hold, original, self)
        hold.hand_over(item)
        return item

    wrapper._torchrepro_batches = True  # type: ignore[attr-defined]
    return wrapper


def _wrap_fetchers() -> None:
    """Wraps the prefetching frameworks' objects whose modules are imported."""
    for module, name, method, kind in _FETCHERS:
        cls = getattr(sys.modules.get(module), name, None)
        original = getattr(cls, "__dict__", {}).get(method)
        if original is not None and not getattr(original, "_torchrepro_batches", False):
            setattr(cls, method, _wrap(original, kind))


def _install() -> None:
    """Reports DataLoader yields; wraps the frameworks' fetchers as loaders are made."""
    global _installed
    if _installed:
        return
    _installed = True
    original_next, original_init = _BaseDataLoaderIter.__next__, DataLoader.__init__

    @functools.wraps(original_next)
    def __next__(self: _BaseDataLoaderIter) -> Any:
        item = original_next(self)
        if _active is not None:
            _active.yielded(item)
        return item

    @functools.wraps(original_init)
    def __init__(self: DataLoader[Any], *args: Any, **kwargs: Any) -> None:
        if _active is not None:
            _wrap_fetchers()  # a framework that makes loaders is imported by now
        original_init(self, *args, **kwargs)

    _BaseDataLoaderIter.__next__ = __next__  # type: ignore[method-assign]
    DataLoader.__init__ = __init__  # type: ignore[method-assign]


def _owns_parameters(module: torch.nn.Module) -> bool:
    return next(iter(module.parameters()), None) is not None


class BatchCapture:
    """The batches of a recording's steps (see the module's notes). One is on at a time.

    Attributes:
        seconds: Host time spent capturing batches yielded by loaders.
    """

    def __init__(self, algorithm: str | None, *, on: bool = True) -> None:
        global _active
        self.algorithm = algorithm
        self.seconds = 0.0
        self._pending: deque[Batch] = deque(maxlen=_MOST_HELD)
        self._taken: list[Batch] = []
        self._evaluated = False  # an evaluation pass saw the pending batches
        self._loaded = False  # the step took a loader's batch
        if on:  # off: takes nothing, and every step's list of batches is empty
            _install()
            _active = self
            _wrap_fetchers()

    def _batch(self, obj: Any, computed: bool = True) -> Batch | None:
        labelled = labelled_tensors(obj)
        if not computed:
            labelled = [(label, t) for label, t in labelled if t.grad_fn is None]
        if not labelled:
            return None
        plain = [(label, t) for label, t in labelled if digestible(t)]
        digests = _digest_tensors([t for _, t in plain], self.algorithm, shards=True)
        others = [label for label, t in labelled if not digestible(t)]
        return Batch([label for label, _ in plain], digests, labelled[0][1], others)

    def yielded(self, item: Any) -> None:
        """A DataLoader iterator yielded ``item``."""
        t0 = time.perf_counter()
        batch = self._batch(item)
        if batch is not None:
            _pass_up([batch])
        self.seconds += time.perf_counter() - t0

    def deliver(self, group: list[Batch]) -> None:
        """Batches handed to the training code."""
        if self._evaluated:
            self._pending.clear()
            self._evaluated = False
        self._pending.extend(group)

    def on_call(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        """An outermost module call: a training call takes the pending batches."""
        if not _owns_parameters(module):
            return
        if not (torch.is_grad_enabled() or module.training):
            self._evaluated = self._evaluated or bool(self._pending)
            return
        self._evaluated = False
        if self._pending:
            self._taken += self._pending
            self._pending.clear()
            self._loaded = True
        elif not self._loaded:
            batch = self._batch(args[0] if len(args) == 1 else args, computed=False)
            if batch is not None:
                self._taken.append(batch)

    def take(self) -> list[Batch]:
        """The batches of the step that ends now."""
        if not self._taken and not self._evaluated:
            self._taken += self._pending
            self._pending.clear()
        taken, self._taken, self._loaded = self._taken, [], False
        for batch in taken:
            batch.first = None  # digested: the tensor may go
        return taken

    def give_back(self, batches: list[Batch]) -> None:
        """Batches of what was no step: they belong to the next."""
        self._taken[:0] = batches

    def close(self) -> None:
        global _active
        if _active is self:
            _active = None
