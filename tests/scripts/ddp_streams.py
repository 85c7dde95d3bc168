"""A DDP training under torchrun (gloo) that reports what each rank drew, for the tests.

Writes OUT/rank<r>.json: the digest of the initial parameters (before the DDP wrap), the
augmentation drawn in the main process and in a DataLoader worker, the dropout masks, the
DistributedSampler's seed and order, and the final parameters' digest.

SEED: the seed for seed_everything ("none": no seed; "skip": no seed_everything call).
PLANT_NOISE_RANK / PLANT_NOISE_STEP: that rank's loader adds os.urandom noise to the batch
of that step (an unseeded augmentation, in the collate function). PLANT_DRIFT_RANK /
PLANT_DRIFT_STEP: that rank edits a parameter in place after that step, outside DDP's
all-reduce. INIT_FIRST=1: initialise the process group before seed_everything.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

import torchrepro

STEPS = 6
NOISE_RANK = int(os.environ.get("PLANT_NOISE_RANK", "-1"))
NOISE_STEP = int(os.environ.get("PLANT_NOISE_STEP", "-1"))
DRIFT_RANK = int(os.environ.get("PLANT_DRIFT_RANK", "-1"))
DRIFT_STEP = int(os.environ.get("PLANT_DRIFT_STEP", "-1"))


class Draws(Dataset[torch.Tensor]):
    def __len__(self) -> int:
        return 32

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(4) + float(np.random.rand())


class Collate:
    """Stacks the samples; adds the planted noise to the batch of the planted step."""

    def __init__(self, rank: int) -> None:
        self.rank, self.calls = rank, 0

    def __call__(self, samples: list[torch.Tensor]) -> torch.Tensor:
        batch = torch.stack(samples)
        if self.rank == NOISE_RANK and self.calls == NOISE_STEP:
            noise = torch.frombuffer(bytearray(os.urandom(4 * batch.numel())), dtype=torch.int32)
            batch = batch + noise.reshape(batch.shape).float() * 1e-12
        self.calls += 1
        return batch


def digest(model: nn.Module) -> str:
    hasher = hashlib.sha256()
    for parameter in model.parameters():
        hasher.update(parameter.detach().numpy().tobytes())
    return hasher.hexdigest()


def main() -> None:
    seed = os.environ.get("SEED", "7")
    if os.environ.get("INIT_FIRST") == "1":
        dist.init_process_group("gloo")
    root = None
    if seed != "skip":
        root = torchrepro.seed_everything(None if seed == "none" else int(seed))
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(4, 32), nn.Dropout(0.5), nn.Linear(32, 1))
    initial = digest(model)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    sampler = DistributedSampler(Draws())
    loader = DataLoader(sampler.dataset, batch_size=4, sampler=sampler, collate_fn=Collate(rank))
    worker_loader = DataLoader(Draws(), batch_size=4, num_workers=1)
    masks, batches = [], []
    for step, batch in enumerate(loader):
        if step == STEPS:
            break
        batches.append(batch.tolist())
        hidden = model[0](batch)
        masks.append((model[1](torch.ones_like(hidden)) == 0).tolist())
        loss = ddp(batch).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if rank == DRIFT_RANK and step == DRIFT_STEP:
            with torch.no_grad():
                model[2].bias.add_(1.0)
    report = {
        "rank": rank,
        "root": root,
        "initial": initial,
        "final": digest(model),
        "augmentation": batches,
        "dropout": masks,
        "worker_augmentation": next(iter(worker_loader)).tolist(),
        "sampler_seed": sampler.seed,
        "order": list(sampler),
    }
    out = Path(os.environ["OUT"])
    (out / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
    # The process group goes once nothing holds it (DDP's reducer does): a gloo group
    # still alive at interpreter exit can abort a rank there.
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
