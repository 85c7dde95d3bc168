"""The batches a training step trained on: what the data pipeline yielded, labelled.

A step's batch is what the loader handed to the training loop: each batch yielded by a
DataLoader iterator, or by a framework's loader wrapped around one (accelerate's
``DataLoaderShard``, which fetches one batch ahead of what it yields), in the process
that trains. Only the outermost iterator counts: the batch a wrapper fetched ahead is
counted when the wrapper yields it, in the step that trains on it. Lightning's data
fetcher prefetches only from loaders without a length; from such a loader the batch of
the next step is counted with this one.

Each tensor of a batch is labelled by where it sits in the batch and what it is
(:func:`labelled_tensors`), so a report says ``batch["input_ids"] (16x16 int64)``.

Example:
    >>> loader = torch.utils.data.DataLoader(torch.arange(6.0), batch_size=3)
    >>> seen = []
    >>> with listening(lambda batch: seen.append(batch)):
    ...     _ = list(loader)
    >>> [b.tolist() for b in seen]
    [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch.utils.data.dataloader import _BaseDataLoaderIter

__all__ = ["labelled_tensors", "listening", "shape_text"]

Listener = Callable[[Any], None]

_listeners: list[Listener] = []
_inside = threading.local()  # depth of loader iteration in this thread
# Loaders of frameworks that wrap a DataLoader and yield what it yields, by module and
# class name: the module is looked for only once it is imported.
_WRAPPING_LOADERS = {"accelerate.data_loader": ("DataLoaderShard", "DataLoaderDispatcher")}
_wrapped: set[type] = set()


def shape_text(tensor: torch.Tensor) -> str:
    """A tensor's shape and dtype as a label shows them.

    Example:
        >>> shape_text(torch.zeros(16, 16, dtype=torch.int64)), shape_text(torch.tensor(1.0))
        ('16x16 int64', 'scalar float32')
    """
    shape = "x".join(map(str, tensor.shape)) or "scalar"
    return f"{shape} {str(tensor.dtype).removeprefix('torch.')}"


def labelled_tensors(batch: Any, path: str = "") -> list[tuple[str, torch.Tensor]]:
    """The tensors in a batch, each with its label: where it sits, then its shape.

    Example:
        >>> batch = {"input_ids": torch.zeros(2, 4, dtype=torch.int64), "text": ["a", "b"]}
        >>> [label for label, _ in labelled_tensors(batch)]
        ['["input_ids"] (2x4 int64)']
        >>> [label for label, _ in labelled_tensors((torch.zeros(3), torch.ones(3)))]
        ['[0] (3 float32)', '[1] (3 float32)']
    """
    if isinstance(batch, torch.Tensor):
        return [(f"{path} ({shape_text(batch)})", batch)]
    found: list[tuple[str, torch.Tensor]] = []
    if isinstance(batch, Mapping):
        for key in batch:
            found += labelled_tensors(batch[key], f'{path}["{key}"]')
    elif isinstance(batch, (list, tuple)):
        for i, item in enumerate(batch):
            found += labelled_tensors(item, f"{path}[{i}]")
    else:  # a dataclass-like batch (e.g. a ModelOutput is a Mapping already)
        fields = getattr(batch, "__dataclass_fields__", None)
        for name in fields or ():
            found += labelled_tensors(getattr(batch, name), f"{path}.{name}")
    return found


def _yielded(batch: Any) -> None:
    for listener in list(_listeners):
        listener(batch)


def _counted(next_: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wraps an iterator's ``__next__``: its batches count unless an outer loader fetched them."""

    @functools.wraps(next_)
    def __next__(self: Any) -> Any:
        if not _listeners:
            return next_(self)
        depth = getattr(_inside, "depth", 0)
        _inside.depth = depth + 1
        try:
            batch = next_(self)
        finally:
            _inside.depth = depth
        if depth == 0:
            _yielded(batch)
        return batch

    __next__._torchrepro_counted = True  # type: ignore[attr-defined]
    return __next__


class _Counting:
    """The iterator of a framework's loader, counted as a DataLoader iterator is."""

    def __init__(self, inner: Iterator[Any]) -> None:
        self._inner = inner

    def __iter__(self) -> _Counting:
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @_counted
    def __next__(self) -> Any:
        return next(self._inner)


def _wrap_framework_loaders() -> None:
    for module_name, names in _WRAPPING_LOADERS.items():
        module = sys.modules.get(module_name)
        for name in names if module is not None else ():
            cls = getattr(module, name, None)
            if isinstance(cls, type) and cls not in _wrapped:
                _wrapped.add(cls)
                original = cls.__iter__  # type: ignore[attr-defined]

                @functools.wraps(original)
                def __iter__(self: Any, _original: Any = original) -> Iterator[Any]:
                    return _Counting(_original(self))

                cls.__iter__ = __iter__  # type: ignore[attr-defined]


def _install() -> None:
    if not getattr(_BaseDataLoaderIter.__next__, "_torchrepro_counted", False):
        _BaseDataLoaderIter.__next__ = _counted(_BaseDataLoaderIter.__next__)  # type: ignore[method-assign, assignment]
        original_init = torch.utils.data.DataLoader.__init__

        @functools.wraps(original_init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            # A framework's loader wraps a DataLoader made after the framework was imported,
            # and before anything iterates it.
            _wrap_framework_loaders()
            original_init(self, *args, **kwargs)

        torch.utils.data.DataLoader.__init__ = __init__  # type: ignore[method-assign]
    _wrap_framework_loaders()


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Calls ``listener(batch)`` for each batch the data pipeline yields, while active."""
    _install()
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)
