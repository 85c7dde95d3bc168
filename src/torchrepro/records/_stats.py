"""The sizes a record keeps next to each exact digest: three norms of each float tensor.

A digest says only whether two tensors are equal; these say by about how much they are
not. For every floating-point parameter (and gradient, when recorded) an entry holds
``[sum |x|, L2 norm, max |x|]`` (:data:`STATS`), accumulated in float64 on the tensor's own
device by three fused ``_foreach_norm`` calls per device, and read back with the entry (a
device run's entry is written at the next step, so this costs no extra synchronisation).
Other tensors (integers, bools, freed storage) get ``None``.

Examples:
    >>> pending = PendingStats([torch.tensor([3.0, -4.0]), torch.tensor([1, 2])])
    >>> pending.values()
    [[7.0, 5.0, 4.0], None]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from torchrepro.digests import _plain_tensor, _storage_holds

__all__ = ["STATS", "PendingStats"]

STATS = ("sum_abs", "l2", "max_abs")
"""What each entry of a record's ``stats`` holds, in order."""
_ORDERS = (1.0, 2.0, float("inf"))


def _measurable(t: torch.Tensor) -> bool:
    return (
        t.is_floating_point()
        and t.layout == torch.strided
        and t.device.type != "meta"
        and _storage_holds(t)
    )


class PendingStats:
    """The statistics of many tensors, possibly still on their devices."""

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self._count = len(tensors)
        by_device: dict[torch.device, list[tuple[int, torch.Tensor]]] = {}
        for i, t in enumerate(tensors):
            local = _plain_tensor(t, shards=True).detach()
            if _measurable(local):
                by_device.setdefault(local.device, []).append((i, local))
        self._parts: list[tuple[list[int], torch.Tensor]] = []
        for items in by_device.values():
            ts = [t for _, t in items]
            norms = [torch._foreach_norm(ts, order, dtype=torch.float64) for order in _ORDERS]
            self._parts.append(
                ([i for i, _ in items], torch.stack([torch.stack(n) for n in norms]))
            )

    def values(self) -> list[list[float] | None]:
        """``[sum |x|, L2, max |x|]`` per tensor, in order (None where not measured)."""
        found: list[list[float] | None] = [None] * self._count
        for indices, stacked in self._parts:
            for i, column in zip(indices, stacked.cpu().t().tolist()):
                found[i] = column
        return found
