"""A DDP training under torchrun (gloo) with one rank's module made noisy, for localization.

PLANT_RANK / PLANT_STEP: on that rank, module `mixer` (``module.mixer`` under DDP) adds
os.urandom noise to its output from that step on (0-based), so the runs part there, on
that rank first. No torchrepro calls; the script seeds torch itself.
"""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

PLANT_RANK = int(os.environ.get("PLANT_RANK", "-1"))
PLANT_STEP = int(os.environ.get("PLANT_STEP", "-1"))
STEPS = 4


class Mixer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        if dist.get_rank() == PLANT_RANK and self.calls >= PLANT_STEP:
            noise = torch.frombuffer(bytearray(os.urandom(4 * y.numel())), dtype=torch.int32)
            y = y + noise.reshape(y.shape).float() * 1e-12
        self.calls += 1
        return y


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.1))
        self.mixer = Mixer()
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mixer(self.encoder(x)))


def main() -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    ddp = DistributedDataParallel(Net())
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    x = torch.randn(4, 4) + dist.get_rank()
    for _ in range(STEPS):
        loss = ddp(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
    gc.collect()  # DDP's reducer holds the group: it goes first (see examples/ddp.py)
    dist.barrier()
    dist.destroy_process_group()
