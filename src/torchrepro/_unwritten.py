"""What an op reads and writes, and which bytes of uninitialized memory no op wrote yet.

The op tracer of a replay (:mod:`torchrepro._tracer`) compares computed values only. An op
of the empty family (``torch.empty``, ``empty_like``, ``new_empty``...) returns whatever
was in memory: :class:`Unwritten` follows each such storage byte by byte until ops have
written all of it, and digests its unwritten elements as the fixed marker
:data:`~torchrepro.localize.UNWRITTEN`, so that two runs compare equal there. :class:`OpInfo`
reads from an op's schema which arguments it writes, and whether it reads them first
(``add_`` does; ``copy_``, ``bernoulli_`` and ``out=`` tensors do not).

Examples:
    >>> memory = Unwritten()
    >>> x = torch.empty(4)
    >>> memory.made(x, "aten.empty.memory_format")
    >>> memory.digests([x])
    (['unwritten'], ['aten.empty.memory_format'])
    >>> memory.wrote(x[:2])  # x[:2] = ... wrote half of it
    >>> digests, sources = memory.digests([x[:2], x])
    >>> len(digests[0]), digests[1].endswith("+unwritten"), sources
    (32, True, ['aten.empty.memory_format'])
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

from torchrepro.digests import _digest_tensors
from torchrepro.localize import EMPTY_OPS, RANDOM_OPS, UNWRITTEN, op_base_name

__all__ = ["OpInfo", "Unwritten"]

# In-place ops that write their `self` without reading its values.
_OVERWRITING = frozenset(
    {"fill_", "zero_", "copy_", "bernoulli_", "uniform_", "normal_", "random_"}
    | {"exponential_", "geometric_", "cauchy_", "log_normal_"}
)
# In-place ops that change a tensor's metadata or storage, not its values.
_METADATA = frozenset(
    {"t_", "transpose_", "squeeze_", "unsqueeze_", "as_strided_", "detach_", "swapdims_"}
    | {"swapaxes_", "set_", "resize_", "resize_as_"}
)


@dataclass(frozen=True)
class OpInfo:
    """What the tracer needs to know of an op, read once from its schema.

    Attributes:
        writes: The arguments it writes: positions, or names of keyword-only ones (``out``).
        reads_written: Whether it reads what it writes (``add_`` does; ``copy_`` does not).
        random: It draws random numbers (a ``Generator`` argument, or a known random op).
        dropout_p: The position of a ``dropout_p`` argument (random when above 0), if any.
        makes_unwritten: Its outputs are uninitialized memory (the empty family).
        metadata: An in-place op on metadata or storage (``t_``, ``set_``), not on values.

    Examples:
        >>> info = OpInfo.of(torch.ops.aten.bernoulli_.float)
        >>> info.writes, info.reads_written, info.random
        ((0,), False, True)
        >>> OpInfo.of(torch.ops.aten.add.out).writes
        ('out',)
    """

    writes: tuple[int | str, ...]
    reads_written: bool
    random: bool
    dropout_p: int | None
    makes_unwritten: bool
    metadata: bool

    @classmethod
    def of(cls, func: Any) -> OpInfo:
        """Reads ``func``'s schema (an op without one writes nothing and reads all)."""
        base = op_base_name(str(func))
        arguments = list(getattr(getattr(func, "_schema", None), "arguments", ()))
        writes: list[int | str] = []
        out = False
        dropout_p = None
        for position, argument in enumerate(arguments):
            info = argument.alias_info
            if info is not None and info.is_write:
                writes.append(argument.name if argument.kwarg_only else position)
                out = out or argument.kwarg_only
            if argument.name == "dropout_p":
                dropout_p = position
        return cls(
            writes=tuple(writes),
            reads_written=not (out or base in _OVERWRITING),
            random=base in RANDOM_OPS or any("Generator" in str(a.type) for a in arguments),
            dropout_p=dropout_p,
            makes_unwritten=base in EMPTY_OPS,
            metadata=base in _METADATA,
        )

    def written(self, args: Sequence[Any], kwargs: dict[str, Any]) -> list[torch.Tensor]:
        """The tensors among the arguments of a call that the op writes."""
        found: list[Any] = []
        for where in self.writes:
            if isinstance(where, str):
                found += tree_flatten(kwargs.get(where))[0]
            elif where < len(args):
                found += tree_flatten(args[where])[0]
        return [t for t in found if isinstance(t, torch.Tensor)]

    def draws(self, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
        """Whether this call draws random numbers."""
        if self.random or self.dropout_p is None:
            return self.random
        value = args[self.dropout_p] if self.dropout_p < len(args) else kwargs.get("dropout_p")
        return isinstance(value, (int, float)) and value > 0


def storage_of(tensor: torch.Tensor) -> Any:
    """The tensor's untyped storage, or None (sparse, meta, subclasses without one)."""
    try:
        if tensor.is_meta or tensor.layout != torch.strided:
            return None
        return tensor.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):
        return None


class Unwritten:
    """The bytes of uninitialized storages that no op has written yet.

    A storage that an op of the empty family made gets a byte mask on its device (False:
    not written yet), dropped once every byte is written or the storage is freed: a weak
    reference to the storage's Python object, which lives as long as the storage.
    """

    def __init__(self) -> None:
        self.masks: dict[int, tuple[weakref.ref[Any], torch.Tensor, str]] = {}

    def made(self, tensor: torch.Tensor, source: str, keep: int = 0) -> None:
        """``tensor``'s storage is unwritten from byte ``keep`` on; ``source`` made it."""
        storage = storage_of(tensor)
        if storage is None or storage.nbytes() <= keep:
            return
        mask = torch.zeros(storage.nbytes(), dtype=torch.bool, device=tensor.device)
        mask[:keep] = True
        key = id(storage)
        masks = self.masks
        masks[key] = (weakref.ref(storage, lambda _: masks.pop(key, None)), mask, source)

    def _region(self, tensor: torch.Tensor) -> tuple[int, torch.Tensor] | None:
        """The storage's key and the byte mask under ``tensor`` (its shape, then bytes)."""
        storage = storage_of(tensor) if self.masks else None
        entry = None if storage is None else self.masks.get(id(storage))
        if entry is None or entry[0]() is not storage:
            return None
        size = tensor.element_size()
        region = entry[1].as_strided(
            (*tensor.shape, size),
            (*(stride * size for stride in tensor.stride()), 1),
            tensor.storage_offset() * size,
        )
        return id(storage), region

    def wrote(self, tensor: torch.Tensor) -> None:
        """An op wrote ``tensor``'s elements."""
        found = self._region(tensor)
        if found is not None:
            key, region = found
            region.fill_(True)
            if bool(self.masks[key][1].all()):
                del self.masks[key]

    def digests(self, tensors: Sequence[torch.Tensor]) -> tuple[list[str], list[str]]:
        """Each tensor's digest, its unwritten elements as the marker; and who made those.

        A tensor nothing wrote is :data:`~torchrepro.localize.UNWRITTEN`; one partly
        written digests its written elements (the others as zeros) with ``+unwritten``.
        """
        plain: list[torch.Tensor] = []
        marks: list[str] = []
        sources: list[str] = []
        for tensor in tensors:
            found = self._region(tensor)
            written = None if found is None else found[1].all(dim=-1)
            if written is None or bool(written.all()):
                plain.append(tensor)
                marks.append("")
                continue
            sources.append(self.masks[found[0]][2])  # type: ignore[index]
            if bool(written.any()):
                plain.append(tensor.masked_fill(~written, 0))
                marks.append("+" + UNWRITTEN)
            else:
                marks.append(UNWRITTEN)
        real = iter(_digest_tensors(plain, None).hexdigests() if plain else [])
        digests = [mark if mark == UNWRITTEN else next(real) + mark for mark in marks]
        return digests, sorted(set(sources))
