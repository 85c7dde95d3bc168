"""What a training saw, step by step, for tests/test_frameworks.py; no torchrepro calls.

``SEEN=path``: each rank writes ``path.rank{r}.json`` at the end: per optimizer step its
epoch, the batch shape and the dataset indices of the batch, and what the loader's sampler
is an instance of. ``PLANT_NOISE_STEP=k``: os.urandom noise is added to a weight just
before the forward of step ``k`` (0-based), so two runs part at step ``k``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, RandomSampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

FEATURES = 32
NOISE_STEP = int(os.environ.get("PLANT_NOISE_STEP", "-1"))


class Indexed(Dataset[tuple[int, torch.Tensor, torch.Tensor]]):
    """Sample ``i`` is ``(i, features, target)``, each a function of ``i`` alone."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        features = torch.sin(torch.arange(FEATURES) * 0.1 + int(index))
        return int(index), features, torch.tensor(float(int(index) % 2))


def sampler_kind(loader: Any) -> str:
    """The PyTorch sampler class a framework would take the loader's sampler for."""
    sampler = getattr(loader, "sampler", None)
    batches = getattr(loader, "batch_sampler", None)
    while hasattr(batches, "batch_sampler"):  # accelerate's shards wrap the batch sampler
        batches = batches.batch_sampler
    if hasattr(batches, "sampler"):
        sampler = batches.sampler
    for kind in (DistributedSampler, RandomSampler, SequentialSampler):
        if isinstance(sampler, kind):
            return kind.__name__
    return "other"


def plant_noise(module: torch.nn.Module, step: int) -> None:
    if step != NOISE_STEP:
        return
    with torch.no_grad():
        weight = next(module.parameters())
        noise = torch.frombuffer(bytearray(os.urandom(4 * weight.numel())), dtype=torch.int32)
        weight.add_(noise.reshape(weight.shape).float() * 1e-12)


class Seen:
    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    def add(self, epoch: int, indices: torch.Tensor, shape: torch.Size) -> None:
        self.steps.append(
            {"epoch": int(epoch), "shape": list(shape), "indices": [int(i) for i in indices]}
        )

    def write(self, rank: int, world_size: int, **facts: Any) -> None:
        path = os.environ.get("SEEN")
        if path:
            record = {"rank": rank, "world_size": world_size, "steps": self.steps, **facts}
            Path(f"{path}.rank{rank}.json").write_text(json.dumps(record))
