"""torchrepro's own device paths, checked on the device: digests, RNG capture, replacements.

Each check returns a result: its name, whether it passed (None when it could not run
here) and what it saw. The fourth self-test, a short training recorded twice in two
processes, is run by `torchrepro doctor` itself through `torchrepro check`.

Examples:
    >>> [r["ok"] for r in run(torch.device("cpu"))][:2]
    [True, True]
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from torchrepro import detops
from torchrepro.digests import fingerprint
from torchrepro.doctor.probes import PROBES, Unavailable
from torchrepro.state import capture_rng, restore_rng

__all__ = ["run"]

# The device digest ("lanes") of fixed tensors, computed on a CPU: a device that gives
# other values computes the digest differently, and its records would not compare.
_GOLDEN: dict[str, tuple[Callable[[], torch.Tensor], str]] = {
    "float32": (
        lambda: torch.arange(1000, dtype=torch.float32) * 0.5 - 3,
        "c19dc9ca4efc01df7135a97e49244294",
    ),
    "bfloat16": (
        lambda: (torch.arange(1000, dtype=torch.float32) * 0.25).to(torch.bfloat16),
        "b1a67f1760ef51b16ce612475a8a1927",
    ),
    "int64": (lambda: torch.arange(-500, 500), "8c15de394ce95f8d05165bd9687d3bea"),
}


def _result(name: str, ok: bool | None, detail: str, **extra: Any) -> dict[str, Any]:
    return {"self_test": name, "ok": ok, "detail": detail, **extra}


def _digest(device: torch.device) -> dict[str, Any]:
    wrong = []
    for dtype, (make, golden) in _GOLDEN.items():
        got = fingerprint(make().to(device), algorithm="lanes")
        if got != golden:
            wrong.append(f"{dtype}: got {got}, expected {golden}")
    detail = "; ".join(wrong) or f"{len(_GOLDEN)} dtypes match their CPU reference values"
    return _result("device digest", not wrong, detail)


def _draws(device: torch.device) -> list[Any]:
    return [random.random(), float(np.random.rand()), torch.rand(4, device=device).tolist()]


def _rng(device: torch.device) -> dict[str, Any]:
    state = capture_rng()
    first = _draws(device)
    restore_rng(state)
    again = _draws(device)
    restore_rng(state)
    ok = first == again
    detail = (
        "Python, numpy and torch streams draw the same numbers after a restore"
        if ok
        else f"after a restore: got {again}, expected {first}"
    )
    return _result("RNG capture and restore", ok, detail, sources=sorted(state.sources))


def _max_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(
        (float((x.double() - y.double()).abs().max()) for x, y in zip(a, b) if x.numel()),
        default=0.0,
    )


def _replacements(device: torch.device) -> dict[str, Any]:
    errors: dict[str, float] = {}
    for probe in PROBES:
        try:
            step = probe.build(device, True)
        except Unavailable:
            continue
        native = [t.detach() for t in step()]
        with detops.deterministic_ops(force=True), detops.served() as served:
            replaced = [t.detach() for t in step()]
        if served:
            errors[f"{probe.name} ({', '.join(sorted(set(served)))})"] = _max_error(
                native, replaced
            )
    # float32 sums in another order: differences near the inputs' rounding are expected.
    worst = max(errors.values(), default=0.0)
    ok = bool(errors) and worst < 1e-3
    detail = f"{len(errors)} probes served by a replacement; largest difference {worst:.2e}"
    return _result("replacements against native ops", ok, detail, max_abs_error=errors)


def run(device: torch.device) -> Iterator[dict[str, Any]]:
    """Runs the in-process self-tests on `device`, one result at a time."""
    for check in (_digest, _rng, _replacements):
        try:
            yield check(device)
        except Exception as error:  # noqa: BLE001 - a failing self-test is its finding
            yield _result(check.__name__.strip("_"), False, f"{type(error).__name__}: {error}")
