"""``torchrepro doctor --model``: the ops one training step of a model runs, and what each
determinism level costs it.

The ops are seen with a ``TorchDispatchMode`` during one forward and backward pass; the cost
is `torchrepro.cost.determinism_cost` on the same model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from torchrepro.cost import determinism_cost, load_workload, loss_of


class _Ops(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Notes each ATen op's name and the dtype of its first floating tensor argument."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.seen: set[tuple[str, str | None]] = set()

    def __torch_dispatch__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None
    ) -> Any:
        leaves, _ = tree_flatten((args, kwargs or {}))
        dtype = next(
            (
                str(x.dtype).removeprefix("torch.")
                for x in leaves
                if isinstance(x, torch.Tensor) and x.is_floating_point()
            ),
            None,
        )
        self.seen.add((func.overloadpacket.__name__, dtype))
        return func(*args, **(kwargs or {}))


def trace_and_cost(spec: str, device: torch.device, steps: int) -> dict[str, Any]:
    """The ops of one step of `spec`'s model and its cost per level, as a JSON-ready dict."""
    model, batch, loss_fn = load_workload(spec, str(device))
    with _Ops() as ops:
        loss_of(model, batch, loss_fn).backward()  # type: ignore[no-untyped-call]
    model.zero_grad(set_to_none=True)
    report = determinism_cost(model, batch, loss_fn, steps=steps)
    return {
        "model": spec,
        "device": report.device,
        "ops": [list(op) for op in sorted(ops.seen, key=lambda op: (op[0], op[1] or ""))],
        "cost": {
            s.name: {
                "ms": None if s.seconds_per_step is None else s.seconds_per_step * 1e3,
                "repeatable": s.repeatable,
                "error": s.error,
            }
            for s in report.settings
        },
    }
