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
from torchrepro.data import batches

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
    count = len(DATA) // 32
    plain = median_epoch()
    torchrepro.seed_everything(11)
    seeded = median_epoch()
    stream_of_epoch = batches.epoch_stream
    batches.epoch_stream = lambda root, rank, epoch: None  # type: ignore[assignment, return-value]
    tracked = median_epoch()  # for the breakdown: tracking and the resumable sampler alone
    batches.epoch_stream = stream_of_epoch
    for name, seconds in [("plain PyTorch", plain), ("tracked, no batch streams", tracked),
                          ("torchrepro", seeded)]:  # fmt: skip
        extra = (seconds - plain) / count * 1e6
        print(
            f"{name:26} {seconds * 1e3:7.1f} ms per epoch of {count} batches, "
            f"{seconds / plain:.2f}x plain ({extra:+.0f} us per batch)"
        )


if __name__ == "__main__":
    main()
