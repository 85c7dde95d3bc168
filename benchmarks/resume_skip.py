"""What resuming costs: samples loaded before the first resumed batch, and RNG capture time.

    python benchmarks/resume_skip.py

A dataset counts its ``__getitem__`` calls. A tracked loader resumed at batch 1000 should
load exactly as much before its first batch as one resumed at batch 1 (ratio ~1): the
skipped batches are sliced off the index list, never loaded.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import torchrepro
from torchrepro import data
from torchrepro.state import RNGState

SAMPLES = 64_000
BATCH = 32


class Counting(Dataset[int]):
    def __init__(self) -> None:
        self.loaded = 0

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, index: int) -> int:
        self.loaded += 1
        return int(index)


def loaded_before_first_batch(batch: int) -> tuple[int, float]:
    torchrepro.seed_everything(0)
    dataset = Counting()
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True)
    position = data.LoaderPosition(0, epoch=0, batch=batch, samples=SAMPLES, batch_size=BATCH)
    data.apply_positions([position])
    start = time.perf_counter()
    next(iter(loader))
    return dataset.loaded, time.perf_counter() - start


def rng_round_trip(repeats: int = 200) -> float:
    torchrepro.register_generator(np.random.default_rng(0), "augment")
    torchrepro.register_generator(torch.Generator().manual_seed(0), "noise")
    start = time.perf_counter()
    for _ in range(repeats):
        torchrepro.restore_rng(torchrepro.capture_rng())
    return (time.perf_counter() - start) / repeats


def main() -> None:
    at_1, time_1 = loaded_before_first_batch(1)
    at_1000, time_1000 = loaded_before_first_batch(1000)
    for batch, loaded, seconds in ((1, at_1, time_1), (1000, at_1000, time_1000)):
        print(
            f"resume at batch {batch:>4}: {loaded} samples loaded before the first batch "
            f"({seconds * 1e3:.1f} ms)"
        )
    print(f"ratio (1000 / 1): {at_1000 / at_1:.2f}")
    per = rng_round_trip()
    sources = ", ".join(torchrepro.capture_rng().sources)
    print(f"capture + restore of all RNG state ({sources}): {per * 1e6:.0f} us")
    state = torchrepro.capture_rng().state_dict()
    start = time.perf_counter()
    RNGState.from_state_dict(state)
    print(
        f"checksum verification of a saved RNG state: {(time.perf_counter() - start) * 1e6:.0f} us"
    )


if __name__ == "__main__":
    main()
