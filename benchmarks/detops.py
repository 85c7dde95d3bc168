"""Throughput of `torchrepro cost`'s built-in model under each determinism setting, and of
each replacement.

Runs on the CPU, and on CUDA when a device is present:

    PYTHONPATH=src python benchmarks/detops.py [--steps 20] [--batch 32]

For each device it prints `torchrepro.cost.determinism_cost` for the built-in model
(conv + `index_add_` messages + bilinear upsample + reflection pad + adaptive avg pool):
time per step and throughput relative to PyTorch's defaults for "recipe", "strict" (which
raises on CUDA: reported) and "torchrepro", and whether two runs repeated bitwise. Then it
times forward + backward of the native ops against the replacements (forced).

GPU figures are pending a device run: this was written and run on a 2-core CPU only, where
PyTorch's kernels are deterministic already, so the CPU ratios say nothing about CUDA.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from torchrepro import cost, detops


def _time(fn: Callable[[], object], device: torch.device, repeat: int = 20) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / repeat * 1e3


def _ops(device: torch.device) -> None:
    cases = [
        ("adaptive_avg_pool2d 24->5", (128, 64, 24, 24), lambda x: F.adaptive_avg_pool2d(x, 5)),
        ("adaptive_avg_pool2d 56->7", (64, 256, 56, 56), lambda x: F.adaptive_avg_pool2d(x, 7)),
        (
            "bilinear 32->48",
            (128, 32, 32, 32),
            lambda x: F.interpolate(x, size=48, mode="bilinear"),
        ),
        (
            "bilinear 64->128",
            (16, 64, 64, 64),
            lambda x: F.interpolate(x, scale_factor=2, mode="bilinear"),
        ),
    ]
    if device.type == "cpu":  # the full shapes take seconds on two cores; shrink them
        cases = [(n, (s[0] // 8, *s[1:]), f) for n, s, f in cases]
    print(f"{'op, input':<40} {'native ms':>10} {'replacement ms':>15}  fwd max err")
    for name, shape, op in cases:
        x = torch.randn(shape, device=device, requires_grad=True)

        def step(x: torch.Tensor = x, op: Callable[..., torch.Tensor] = op) -> torch.Tensor:
            y = op(x)
            y.sum().backward()
            return y

        native_ms = _time(step, device, repeat=5)
        native = op(x).detach()
        with detops.deterministic_ops(force=True):
            ours_ms = _time(step, device, repeat=5)
            err = (op(x).detach() - native).abs().max().item()
        print(f"{name + ' ' + str(tuple(shape)):<40} {native_ms:10.2f} {ours_ms:15.2f}  {err:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    for device in devices:
        model, batch, loss_fn = cost.example_workload(device, batch_size=args.batch)
        print(cost.determinism_cost(model, batch, loss_fn, steps=args.steps).render())
        print()
        _ops(device)
        print()


if __name__ == "__main__":
    main()
