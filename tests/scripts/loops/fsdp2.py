"""FSDP2 (`fully_shard` on each Linear and on the model) on gloo ranks, AdamW; run with torchrun.

STEPS: optimizer steps (default 6). PLANT_NOISE_STEP=k with PLANT_NOISE_RANK=r: rank r adds
os.urandom noise to its input batch at step k. SHARDS_OUT=dir: each rank writes the
digests of its local shards after training to dir/shards{rank}.json.

The group goes as examples/ddp.py lets it go: once ``main`` has returned and a collection
has freed the sharded model (whose DTensors hold the group), every rank meets at a barrier
and destroys it. On gloo a group left alive at exit, or destroyed under a live model, can
abort a rank at exit ("terminate called without an active exception"): 2 of 10 runs did
without a destroy, 0 of 34 this way.
"""

from __future__ import annotations

import gc
import json
import os

import torch
import torch.distributed as dist
from torch import nn

try:
    from torch.distributed.fsdp import fully_shard
except ImportError:  # torch < 2.6
    from torch.distributed._composable.fsdp import fully_shard

STEPS = int(os.environ.get("STEPS", "6"))
NOISE_STEP = int(os.environ.get("PLANT_NOISE_STEP", "-1"))
NOISE_RANK = int(os.environ.get("PLANT_NOISE_RANK", "0"))


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)  # the same initial parameters on every rank
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    data = torch.Generator().manual_seed(1 + rank)  # each rank its own share of the data
    for step in range(STEPS):
        x = torch.randn(4, 8, generator=data)
        y = torch.randn(4, 4, generator=data)
        if step == NOISE_STEP and rank == NOISE_RANK:
            noise = torch.frombuffer(bytearray(os.urandom(4 * x.numel())), dtype=torch.int32)
            x = x + noise.reshape(x.shape).float() * 1e-12
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if os.environ.get("SHARDS_OUT"):
        from torchrepro.digests import fingerprint

        shards = {name: str(fingerprint(p.to_local())) for name, p in model.named_parameters()}
        path = os.path.join(os.environ["SHARDS_OUT"], f"shards{rank}.json")
        with open(path, "w") as file:
            json.dump(shards, file)
    print(f"rank {rank} trained {STEPS} steps")


if __name__ == "__main__":
    main()
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
