"""What a seeded loader costs per batch: each batch loaded under streams of its own.

One epoch of a DataLoader (16384 samples of 32 floats, batches of 32, shuffled,
``num_workers=0``: the cost lands in the training process), plain PyTorch first (no
torchrepro hook installed yet), then after ``torchrepro.seed_everything`` (tracked, resumable
sampler, batch streams: the host generators seeded and put back around every batch).
Prints the median epoch time of each and the ratio. Run: ``python benchmarks/batch_streams.py``.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import torchrepro

REPEATS = 7
DATA = TensorDataset(torch.randn(16384, 32))


def epoch_seconds() -> float:
    loader = DataLoader(DATA, batch_size=32, shuffle=True)
    started = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - started


def median_epoch() -> float:
    epoch_seconds()  # warm-up
    return statistics.median(epoch_seconds() for _ in range(REPEATS))


def main() -> None:
    batches = len(DATA) // 32
    plain = median_epoch()
    torchrepro.seed_everything(11)
    seeded = median_epoch()
    extra = (seeded - plain) / batches * 1e6
    print(f"plain PyTorch loader: {plain * 1e3:7.1f} ms per epoch of {batches} batches")
    print(f"torchrepro loader:    {seeded * 1e3:7.1f} ms ({extra:+.1f} us per batch)")
    print(f"ratio torchrepro / plain: {seeded / plain:.2f}x")


if __name__ == "__main__":
    main()
