"""An accelerate training loop as its docs write it; no torchrepro calls.

One process, or one per rank under torchrun (accelerate's multi-CPU mode, gloo). SEEN and
PLANT_NOISE_STEP: see seen.py. No loader workers: with 2 workers per rank, one worker of
rank 1 hung once in about ten launches, in CPython's after-fork clean-up of thread states,
right after accelerate's gloo broadcast of the generator state (Lightning's scripts use
workers). CALLBACK=1: ``torchrepro.integrations.accelerate.register`` (TORCHREPRO_SEED).
"""

from __future__ import annotations

import gc
import os

import torch
from accelerate import Accelerator
from seen import Indexed, Seen, plant_noise, sampler_kind
from torch.utils.data import DataLoader


def main() -> Accelerator:
    accelerator = Accelerator(cpu=True)
    if os.environ.get("CALLBACK") == "1":
        from torchrepro.integrations.accelerate import register

        register(accelerator)
    model = torch.nn.Linear(32, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(Indexed(96), batch_size=8, shuffle=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    seen, step = Seen(), 0
    for epoch in range(2):
        for index, x, y in loader:
            plant_noise(model, step)
            seen.add(epoch, index, x.shape)
            loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
    seen.write(accelerator.process_index, accelerator.num_processes, sampler=sampler_kind(loader))
    return accelerator


if __name__ == "__main__":
    accelerator = main()
    # As accelerate's docs end a script (end_training destroys the process group), once
    # nothing holds the group: a gloo group still alive at exit, or destroyed under the
    # prepared model, can abort a rank at exit (see examples/ddp.py).
    accelerator.free_memory()
    gc.collect()
    accelerator.wait_for_everyone()
    accelerator.end_training()
