"""An accelerate loop resumed with ``save_state`` / ``load_state``, as accelerate's docs write it.

The dataset and model of lightning_resume.py (224 augmented samples, batches of 16: 14
steps an epoch, 2 epochs, dropout), a seedable sampler, ``set_epoch`` every epoch. ``OUT``:
a folder; the uninterrupted run saves ``OUT/step10`` (mid-epoch) and ``OUT/step14`` (the
epoch boundary). ``RESUME=path``: ``load_state(path)``, then ``skip_first_batches`` for the
trained batches of the epoch. The final parameters go to ``OUT/final.pt``. ``WORKERS``:
loader workers (2). ``CALLBACK=1`` adds torchrepro's
``register(accelerator)``: the only torchrepro line.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from augmented import Augmented
from torch.utils.data import DataLoader

OUT = Path(os.environ["OUT"])
RESUME = os.environ.get("RESUME")
STEPS_PER_EPOCH = 14


def main() -> None:
    set_seed(42)
    accelerator = Accelerator(
        cpu=True, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True)
    )
    if os.environ.get("CALLBACK") == "1":
        from torchrepro.integrations.accelerate import register

        register(accelerator, seed=42)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(32, 1)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    workers = int(os.environ.get("WORKERS", "2"))
    loader = DataLoader(Augmented(), batch_size=16, shuffle=True, num_workers=workers)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    step = 0
    if RESUME:
        accelerator.load_state(RESUME)
        step = int(Path(RESUME).name.removeprefix("step"))
    for epoch in range(step // STEPS_PER_EPOCH, 2):
        loader.set_epoch(epoch)
        batches = loader
        if epoch == step // STEPS_PER_EPOCH and step % STEPS_PER_EPOCH:
            batches = accelerator.skip_first_batches(loader, step % STEPS_PER_EPOCH)
        for x, y in batches:
            loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step in (10, 14):
                accelerator.save_state(OUT / f"step{step}")
    torch.save(accelerator.unwrap_model(model).state_dict(), OUT / "final.pt")


if __name__ == "__main__":
    main()
