"""Benchmark: digest speed against torch.sum and SHA-256, and the recorder's overhead.

Run: PYTHONPATH=src python benchmarks/fingerprint.py [--quick]

Prints ratios measured in this one run (best of several repeats each), against the targets
of issue #4: CPU digest at most 1.5x torch.sum over the same bytes, at least 10x faster than
hashlib.sha256; and of "Do no harm on real training code": recorder overhead at most 0.5 %
of a small CNN's step time. The floor printed beside it is the least any recorder must do
after each step, measured the same way: digest the parameters and write one line.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from torchrepro.digests import _digest_tensors
from torchrepro.records import Recorder, record
from torchrepro.records._stats import PendingStats


def best_of(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: page faults, thread pool start
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def digest_speed(n_tensors: int, total_mb: float, repeats: int) -> None:
    g = torch.Generator().manual_seed(0)
    per = int(total_mb * 1e6 / 4 / n_tensors)
    tensors = [torch.randn(per, generator=g) for _ in range(n_tensors)]
    nbytes = sum(t.numel() * 4 for t in tensors)
    views = [t.numpy().data for t in tensors]

    def sha256() -> None:
        for v in views:
            hashlib.sha256(v).digest()

    t_sum = best_of(lambda: [t.sum() for t in tensors], repeats)
    t_xxh = best_of(lambda: _digest_tensors(tensors).resolve(), repeats)
    t_sha = best_of(sha256, max(1, repeats // 2))
    print(
        f"digest of {n_tensors} float32 tensors, {nbytes / 1e6:.0f} MB, CPU, "
        f"{torch.get_num_threads()} torch threads:"
    )
    print(f"  torch.sum           {t_sum * 1e3:8.1f} ms")
    print(
        f"  fingerprint (xxh3)  {t_xxh * 1e3:8.1f} ms   {t_xxh / t_sum:5.2f}x torch.sum "
        "(target <= 1.5x)"
    )
    print(
        f"  hashlib.sha256      {t_sha * 1e3:8.1f} ms   fingerprint is {t_sha / t_xxh:5.1f}x "
        "faster (target >= 10x)"
    )
    small = tensors[:20]
    t_lanes = best_of(lambda: _digest_tensors(small, "lanes").resolve(), max(1, repeats // 2))
    t_small_sum = best_of(lambda: [t.sum() for t in small], repeats)
    print(
        f"  lanes64x2-v1 on CPU (device algorithm, reference only), first 20 tensors: "
        f"{t_lanes * 1e3:.1f} ms = {t_lanes / t_small_sum:.0f}x torch.sum"
    )


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _Floor:
    """An optimizer hook doing only what every step's entry needs: digests, one write."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "wb")  # noqa: SIM115
        self.hook_seconds = 0.0
        self.handle = register_optimizer_step_post_hook(self.on_step)

    def on_step(self, optimizer: torch.optim.Optimizer, *_: object) -> None:
        t0 = time.perf_counter()
        params = optimizer.param_groups[0]["params"]
        line = ",".join(_digest_tensors(params).hexdigests()) + "\n"
        os.write(self.file.fileno(), line.encode())
        self.hook_seconds += time.perf_counter() - t0

    def close(self) -> None:
        self.handle.remove()
        self.file.close()


def train_steps(steps: int, path: str | None, floor: bool = False) -> tuple[float, float]:
    """Seconds per step (median over steps) and recorder hook seconds per step."""
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(64, 1, 28, 28)
    y = torch.randint(0, 10, (64,))
    recorder: Recorder | _Floor | None = None
    if path:
        recorder = _Floor(path) if floor else record(path)
    times = []
    first_step_hook = 0.0
    for step in range(steps):
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        if step == 0 and recorder is not None:
            # The first step also names the parameters and writes the header with the
            # environment manifest: a one-off cost, reported apart from the per-step one.
            first_step_hook = recorder.hook_seconds
    hook = 0.0
    if recorder is not None:
        hook = (recorder.hook_seconds - first_step_hook) / (steps - 1)
        recorder.close()
    return statistics.median(times[1:]), hook


def recorder_overhead(steps: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        train_steps(5, None)  # warm-up
        plain, recorded, hooks, floors = [], [], [], []
        for r in range(rounds):  # alternate, so drift hits both sides alike
            plain.append(train_steps(steps, None)[0])
            step, hook = train_steps(steps, os.path.join(d, f"r{r}.jsonl"))
            recorded.append(step)
            hooks.append(hook)
            floors.append(train_steps(steps, os.path.join(d, f"f{r}.txt"), floor=True)[1])
    base, rec, hook = min(plain), min(recorded), statistics.median(hooks)
    floor = statistics.median(floors)
    n_params = sum(p.numel() for p in SmallCNN().parameters())
    print(
        f"recorder on a small CPU CNN ({n_params} parameters in "
        f"{len(list(SmallCNN().parameters()))} tensors, batch 64, params digested every step):"
    )
    print(
        f"  step without recorder {base * 1e3:7.2f} ms, with recorder {rec * 1e3:7.2f} ms "
        f"(end to end {100 * (rec / base - 1):+.2f} %, includes run-to-run noise)"
    )
    print(
        f"  time inside the recorder's hooks {hook * 1e6:6.1f} us per step after the first = "
        f"{100 * hook / base:.2f} % of step time (target <= 0.5 %)"
    )
    print(
        f"  floor (digest the parameters, write one line) {floor * 1e6:6.1f} us per step = "
        f"{100 * floor / base:.2f} % of step time"
    )
    params = list(SmallCNN().parameters())
    sizes = best_of(lambda: PendingStats(params).values(), 200)
    print(
        f"  of which the sizes kept beside the digests (sum |x|, L2, max |x|) "
        f"{sizes * 1e6:6.1f} us per step = {100 * sizes / base:.2f} % of step time"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    if args.quick:
        digest_speed(50, 20, 3)
        recorder_overhead(20, 2)
    else:
        digest_speed(200, 210, 7)
        recorder_overhead(60, 4)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
