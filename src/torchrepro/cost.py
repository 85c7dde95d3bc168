"""What determinism costs a model: throughput under each setting, and which one it needs.

`determinism_cost(model, batch, loss_fn)` times a few training steps under each setting,
from PyTorch's defaults to torchrepro's deterministic mode (strict mode with the op
replacements of `torchrepro.detops`), and says which setting the model needs to be
repeatable. `torchrepro cost [module:function]` prints that report (`cost_from_spec`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Union

import torch
from torch import nn

from torchrepro._cost_workload import example_workload
from torchrepro._levels import LEVELS, NAMES, Flags
from torchrepro._specs import load_function
from torchrepro.digests import same_bits
from torchrepro.errors import DeterminismError

__all__ = [
    "CostReport",
    "SettingCost",
    "cost_from_spec",
    "determinism_cost",
    "example_workload",
    "load_workload",
    "loss_of",
]

Batch = Union[torch.Tensor, Sequence[torch.Tensor]]
LossFn = Callable[..., torch.Tensor]


@dataclasses.dataclass(frozen=True)
class SettingCost:
    """The measurement of one setting.

    Attributes:
        name: "defaults", "recipe", "strict" or "torchrepro".
        description: the switches the setting turns on.
        seconds_per_step: fastest timed run, per step; None if the setting raised.
        ratio: throughput relative to "defaults" (1.0 is as fast, 0.8 is 20 % slower).
        repeatable: whether two runs from the same initial state gave bitwise-equal
            parameters and buffers; None if the setting raised.
        error: the first line of the error the setting raised, else None.
        extra_ops: (op, extra milliseconds per step versus "defaults") for the ops that
            cost the most extra time, most first (torch.profiler self time).
    """

    name: str
    description: str
    seconds_per_step: float | None
    ratio: float | None
    repeatable: bool | None
    error: str | None
    extra_ops: tuple[tuple[str, float], ...]


@dataclasses.dataclass(frozen=True)
class CostReport:
    """Throughput and repeatability of a model's training step under each setting.

    Attributes:
        device: where the steps ran, e.g. "cpu" or "cuda:0 (NVIDIA H100 80GB HBM3)".
        steps: training steps per timed run.
        rounds: timed runs per setting.
        settings: one entry per setting, cheapest switches first.
    """

    device: str
    steps: int
    rounds: int
    settings: tuple[SettingCost, ...]

    @property
    def needed(self) -> str | None:
        """The first setting (fewest switches) whose runs were repeatable, or None."""
        return next((s.name for s in self.settings if s.repeatable), None)

    def render(self) -> str:
        """The report as text, one line per setting, then the verdict and the costly ops."""
        lines = [
            f"determinism cost on {self.device}, torch {torch.__version__}, "
            f"{self.steps} steps per run, fastest of {self.rounds} runs; speed is steps per "
            "second relative to defaults (higher is faster)",
            f"{'setting':<11} {'ms/step':>9} {'speed':>11} {'repeatable':>10}  switches",
        ]
        for s in self.settings:
            ms = (
                f"{s.seconds_per_step * 1e3:9.2f}"
                if s.seconds_per_step is not None
                else f"{'-':>9}"
            )
            ratio = f"{s.ratio:10.2f}x" if s.ratio is not None else f"{'-':>11}"
            rep = {True: "yes", False: "NO", None: "-"}[s.repeatable]
            lines.append(f"{s.name:<11} {ms} {ratio} {rep:>10}  {s.description}")
            if s.error:
                lines.append(f"{'':<11} raised {s.error}")
        needed = self.needed
        lines.append(
            f"needs: {needed} (cheapest setting that repeated bitwise within this process; "
            "across processes and machines check with two real runs)"
            if needed
            else "needs: no setting repeated bitwise; look for unseeded randomness in the step"
        )
        for s in self.settings:
            if s.extra_ops and s.name != "defaults":
                ops = ", ".join(f"{op} +{ms:.3f} ms" for op, ms in s.extra_ops)
                lines.append(f"extra time per step under {s.name}: {ops}")
        return "\n".join(lines)


def _device_of(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    raise DeterminismError(
        "determinism_cost needs a model with parameters; got one without any. "
        "Pass the model that the training step updates."
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rng_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def loss_of(model: nn.Module, batch: Batch, loss_fn: LossFn) -> torch.Tensor:
    """The loss of one forward pass: `loss_fn(model(x))`, or `loss_fn(model(x), y)` for a pair."""
    if isinstance(batch, torch.Tensor):
        return loss_fn(model(batch))
    inputs, target = batch
    return loss_fn(model(inputs), target)


def _train(
    model: nn.Module,
    batch: Batch,
    loss_fn: LossFn,
    start: dict[str, torch.Tensor],
    steps: int,
    lr: float,
    device: torch.device,
) -> list[torch.Tensor]:
    """Run `steps` SGD steps from `start` with a fixed RNG; return the final state."""
    model.load_state_dict(start)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    with torch.random.fork_rng(devices=_rng_devices(device)):
        torch.manual_seed(0)
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss_of(model, batch, loss_fn).backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    _sync(device)
    return [t.detach().clone() for t in model.state_dict().values()]


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """The profiler's C++ library logs its start and stop to file descriptor 2; a report
    has no use for those lines. Python's own errors still raise."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _op_times(run: Callable[[], object], device: torch.device) -> dict[str, float]:
    """Self time in milliseconds of each op during `run()`, on the device when it is CUDA."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with _native_stderr_silenced(), profile(activities=activities) as prof:
        run()
    times: dict[str, float] = {}
    for event in prof.key_averages():
        # Ranges (autograd nodes, optimizer step) hold ops rather than being ops.
        if event.key.startswith(("autograd::", "Optimizer.", "ProfilerStep")):
            continue
        us = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
        times[event.key] = times.get(event.key, 0.0) + us / 1e3
    return times


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def determinism_cost(
    model: nn.Module,
    batch: Batch,
    loss_fn: LossFn,
    *,
    steps: int = 5,
    lr: float = 1e-3,
    rounds: int = 2,
    top: int = 5,
) -> CostReport:
    """Time `steps` training steps under each determinism setting and report the cost.

    Settings, cheapest switches first: "defaults" (PyTorch's), "recipe"
    (cudnn.deterministic, benchmark off), "strict" (recipe + use_deterministic_algorithms,
    as PyTorch ships it: it may raise, which is reported), "torchrepro" (strict + patched
    ops + fill_uninitialized_memory off). Each runs one warm-up step and one step under
    torch.profiler (to attribute extra time to ops), then `rounds` runs of `steps` SGD
    steps from the same initial state and RNG seed, the settings taking turns; the
    parameters and buffers of its runs are compared bitwise, and its fastest run counts.
    Every flag, the patch state, the global RNG and the model's state are restored
    afterwards, also on error.

    Args:
        model: the model to train; its state is restored when measuring ends.
        batch: a tensor `x` (the loss is `loss_fn(model(x))`) or a pair `(x, y)` (the loss
            is `loss_fn(model(x), y)`), already on the model's device.
        loss_fn: returns a scalar loss.
        steps: steps per timed run (>= 1).
        lr: SGD learning rate of the measured steps.
        rounds: timed runs per setting (>= 2, since repeatability needs two).
        top: how many of the costliest ops to list per setting.

    Returns:
        A `CostReport`; `print(report.render())` for the text.

    Examples:
        >>> model, batch, loss_fn = example_workload()
        >>> report = determinism_cost(model, batch, loss_fn, steps=1)
        >>> [s.name for s in report.settings]
        ['defaults', 'recipe', 'strict', 'torchrepro']
    """
    if not isinstance(steps, int) or steps < 1:
        raise DeterminismError(f"steps must be an int >= 1; got {steps!r}. Pass e.g. steps=5.")
    if not isinstance(rounds, int) or rounds < 2:
        raise DeterminismError(f"rounds must be an int >= 2; got {rounds!r}. Pass e.g. rounds=2.")
    device = _device_of(model)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    saved = Flags.capture()
    seconds: dict[str, list[float]] = {name: [] for name in NAMES}
    finals: dict[str, list[list[torch.Tensor]]] = {name: [] for name in NAMES}
    ops: dict[str, dict[str, float]] = {name: {} for name in NAMES}
    errors: dict[str, str] = {}
    try:
        # Settings take turns round by round, so that load from other processes spreads
        # over all of them instead of landing on whichever ran at the wrong moment.
        for round_ in range(rounds + 1):
            for level in LEVELS:
                name = level.name
                if name in errors:
                    continue
                level.flags.apply()
                try:
                    if round_ == 0:  # warm-up (kernel choice, allocator), then attribution
                        _train(model, batch, loss_fn, start, 1, lr, device)
                        ops[name] = _op_times(
                            lambda: _train(model, batch, loss_fn, start, 1, lr, device), device
                        )
                        continue
                    t0 = time.perf_counter()
                    finals[name].append(_train(model, batch, loss_fn, start, steps, lr, device))
                    seconds[name].append((time.perf_counter() - t0) / steps)
                except RuntimeError as err:
                    # Strict mode raising on an op is a finding, not a failed measurement.
                    errors[name] = _first_line(err)
    finally:
        model.load_state_dict(start)
        saved.apply()
    measured = [
        (
            name,
            description,
            None if name in errors else min(seconds[name]),
            None if name in errors else all(same_bits(finals[name][0], f) for f in finals[name]),
            errors.get(name),
            ops[name],
        )
        for name, description in ((level.name, level.description) for level in LEVELS)
    ]
    base_time = measured[0][2]
    base_ops = measured[0][5]
    settings = []
    for name, description, sec, repeatable, error, op_ms in measured:
        extra = sorted(
            ((op, ms - base_ops.get(op, 0.0)) for op, ms in op_ms.items()),
            key=lambda item: -item[1],
        )
        settings.append(
            SettingCost(
                name=name,
                description=description,
                seconds_per_step=sec,
                ratio=base_time / sec if sec and base_time else None,
                repeatable=repeatable,
                error=error,
                extra_ops=tuple((op, ms) for op, ms in extra[:top] if ms > 0),
            )
        )
    return CostReport(
        device=_describe(device), steps=steps, rounds=rounds, settings=tuple(settings)
    )


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def load_workload(spec: str | None, device: str = "cpu") -> tuple[nn.Module, Batch, LossFn]:
    """The `(model, batch, loss_fn)` that `module:function` returns, or `example_workload`'s
    when `spec` is None. The working directory is searched first, as ``python -m`` does.

    Examples:
        >>> model, batch, loss_fn = load_workload(None)
        >>> type(model).__name__
        '_FieldModel'
    """
    if spec is None:
        kind = torch.device(device).type
        if kind == "cuda" and not torch.cuda.is_available():
            raise DeterminismError(
                f"--device {device}: this machine has no CUDA device (torch {torch.__version__}); "
                "expected a device this torch can use. Pass --device cpu."
            )
        return example_workload(device)
    factory = load_function(
        spec, DeterminismError, "workload", "(model, batch, loss_fn)", "mypkg.train:cost_workload"
    )
    workload: Any = factory()
    if not (isinstance(workload, tuple) and len(workload) == 3):
        raise DeterminismError(
            f"{spec} must return (model, batch, loss_fn); got {type(workload).__name__}."
        )
    return workload


def cost_from_spec(spec: str | None = None, *, steps: int = 5, device: str = "cpu") -> CostReport:
    """Cost report for `module:function` (which returns `(model, batch, loss_fn)`), or for
    `example_workload(device)` when `spec` is None. Meant for `torchrepro cost [SPEC]`.

    Examples:
        >>> cost_from_spec(None, steps=1).settings[0].name
        'defaults'
    """
    model, batch, loss_fn = load_workload(spec, device)
    return determinism_cost(model, batch, loss_fn, steps=steps)
