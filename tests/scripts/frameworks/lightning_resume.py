"""A Lightning training resumed with Lightning's own checkpoints, as its users write it.

224 samples with random augmentation (Python, numpy and torch draws in ``__getitem__``),
batches of 16: 14 steps an epoch, 2 epochs, a model with dropout. ``OUT``: a folder.
The uninterrupted run saves checkpoints after step 10 (mid-epoch) and step 14 (the epoch
boundary) under ``OUT/step10``, ``OUT/step14``. ``RESUME=path`` resumes from one with
``trainer.fit(..., ckpt_path=path)``. Either way the final parameters go to
``OUT/final.pt``. ``WORKERS``: loader workers (2).
``CALLBACK=1`` adds torchrepro's callback: the only torchrepro line. ``DEVICES=2``:
``strategy="ddp"`` on 2 CPU processes (7 steps an epoch per rank; checkpoints after steps 5
and 7 instead).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from augmented import Augmented
from torch.utils.data import DataLoader

OUT = Path(os.environ["OUT"])
RESUME = os.environ.get("RESUME")
WORKERS = int(os.environ.get("WORKERS", "2"))
CALLBACK = os.environ.get("CALLBACK") == "1"
DEVICES = int(os.environ.get("DEVICES", "1"))
SAVE_AFTER = (10, 14) if DEVICES == 1 else (5, 7)


class Model(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(32, 1)
        )

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x).squeeze(1), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def main() -> None:
    warnings.filterwarnings("ignore")  # Lightning's advice on workers and logging
    pl.seed_everything(42, workers=True, verbose=False)
    loader = DataLoader(Augmented(), batch_size=16, shuffle=True, num_workers=WORKERS)
    model = Model()
    callbacks: list[pl.Callback] = [
        pl.callbacks.ModelCheckpoint(
            dirpath=OUT / f"step{n}", every_n_train_steps=n, save_top_k=-1, filename="{step}"
        )
        for n in SAVE_AFTER
    ]
    if CALLBACK:
        from torchrepro.integrations.lightning import TorchRepro

        callbacks.append(TorchRepro())
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=DEVICES,
        strategy="ddp" if DEVICES > 1 else "auto",
        max_epochs=2,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, loader, ckpt_path=RESUME)
    if trainer.global_rank == 0:
        torch.save(model.state_dict(), OUT / "final.pt")


if __name__ == "__main__":
    main()
