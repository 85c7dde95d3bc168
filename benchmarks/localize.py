"""Benchmark: the time `torchrepro check` spends localizing, against one run up to step s.

Run: python benchmarks/localize.py [--at S] [--width W]

A small CPU training (an MLP with dropout, a 2-worker DataLoader) with os.urandom noise
planted in one inner module from step S on, so the runs part at step S. Times, in one run
of this script: one plain run of the script up to the end of step S (the baseline), then
`torchrepro check` on the full script, in-process, with the replays that name the module
and op timed on their own (from their start until both traces are read). Each is measured
``--repeat`` times and the medians are compared. Every process gets one thread
(``OMP_NUM_THREADS=1``, as check gives each of its two runs side by side on 2 cores), so the
baseline is not slowed by threads thrashing on a shared machine. Target (issue 14):
localization at most 1x the plain run up to step S.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import os, sys, torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

STEPS, AT, WIDTH = int(os.environ["STEPS"]), int(os.environ["AT"]), int(os.environ["WIDTH"])


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(WIDTH, WIDTH)
        self.calls = 0

    def forward(self, x):
        y = self.dense(x)
        self.calls += 1
        if self.calls > AT and os.environ.get("PLANT") == "1":
            noise = torch.frombuffer(bytearray(os.urandom(4 * y.numel())), dtype=torch.int32)
            y = y + noise.reshape(y.shape).float() * 1e-12
        return y


torch.manual_seed(0)
model = nn.Sequential(
    nn.Linear(64, WIDTH), nn.ReLU(), nn.Dropout(0.1),
    nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Dropout(0.1),
    Noisy(), nn.ReLU(), nn.Linear(WIDTH, 10),
)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
data = TensorDataset(torch.randn(64 * STEPS, 64), torch.randint(0, 10, (64 * STEPS,)))
loader = DataLoader(data, batch_size=64, shuffle=True, num_workers=2)
for step, (x, y) in enumerate(loader):
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--at", type=int, default=40, help="the step where the runs part")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from torchrepro.check import check_command, findings

    spent: list[float] = []
    replay = findings.replay

    def timed_replay(*a: object, **k: object) -> findings.Replay:
        started = time.perf_counter()
        try:
            return replay(*a, **k)  # type: ignore[arg-type]
        finally:
            spent.append(time.perf_counter() - started)

    findings.replay = timed_replay  # type: ignore[assignment]
    plains, totals = [], []
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "train.py"
        script.write_text(SCRIPT)
        env = {"AT": str(args.at), "WIDTH": str(args.width), "OMP_NUM_THREADS": "1"}
        plain_env = {**os.environ, **env, "STEPS": str(args.at + 1)}
        checked_env = {**env, "STEPS": str(args.steps), "PLANT": "1"}
        for _ in range(args.repeat):
            started = time.perf_counter()
            subprocess.run([sys.executable, str(script)], env=plain_env, check=True)
            plains.append(time.perf_counter() - started)
            started = time.perf_counter()
            report = check_command(
                [sys.executable, str(script)],
                seed=1,
                env={**checked_env, "PYTHONPATH": str(ROOT / "src")},
            )
            totals.append(time.perf_counter() - started)
    plain, total, spent_median = (statistics.median(times) for times in (plains, totals, spent))
    where = report.localization
    print(f"MLP width {args.width}, AdamW, 2-worker DataLoader; the runs part at step {args.at}")
    print(f"  found: {report.verdict} at step {report.divergence and report.divergence.step}")
    print(f"  named: {where.describe() if where else report.notes}")
    print(f"  medians of {args.repeat}; one thread per process")
    print(f"  one plain run up to step {args.at}          {plain:7.2f} s   1.00x")
    print(f"  torchrepro check, all of it            {total:7.2f} s   {total / plain:.2f}x")
    print(
        f"  of which the localization replays     {spent_median:7.2f} s   "
        f"{spent_median / plain:.2f}x  (target <= 1x)"
    )


if __name__ == "__main__":
    main()
