"""A Lightning training as users write it; no torchrepro calls.

DEVICES=1 (default): one CPU device. DEVICES=2: strategy="ddp" on the CPU (gloo); Lightning
starts the second rank itself, by running this script again. LOADER_IN_HOOK=1: the loader
is made in the module's ``train_dataloader`` hook instead of passed to ``fit``. CALLBACK=1:
torchrepro's Lightning callback is added (it follows TORCHREPRO_SEED). SEEN and
PLANT_NOISE_STEP: see seen.py.
"""

from __future__ import annotations

import os
import warnings

import pytorch_lightning as pl
import torch
from seen import Indexed, Seen, plant_noise, sampler_kind
from torch.utils.data import DataLoader

DEVICES = int(os.environ.get("DEVICES", "1"))
IN_HOOK = os.environ.get("LOADER_IN_HOOK") == "1"


def make_loader() -> DataLoader:
    return DataLoader(Indexed(896), batch_size=64, shuffle=True, num_workers=2)


class Model(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(32, 1)
        self.seen = Seen()

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        index, x, y = batch
        plant_noise(self.layer, self.global_step)
        self.seen.add(self.current_epoch, index, x.shape)
        return torch.nn.functional.mse_loss(self.layer(x).squeeze(1), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_train_end(self) -> None:
        loader = self.trainer.train_dataloader
        self.seen.write(self.global_rank, self.trainer.world_size, sampler=sampler_kind(loader))


class HookModel(Model):
    def train_dataloader(self) -> DataLoader:
        return make_loader()


def main() -> None:
    warnings.filterwarnings("ignore")  # Lightning's advice on workers and logging
    callbacks = []
    if os.environ.get("CALLBACK") == "1":
        from torchrepro.integrations.lightning import TorchRepro

        callbacks.append(TorchRepro())
    trainer = pl.Trainer(
        callbacks=callbacks,
        accelerator="cpu",
        devices=DEVICES,
        strategy="ddp" if DEVICES > 1 else "auto",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    if IN_HOOK:
        trainer.fit(HookModel())
    else:
        trainer.fit(Model(), make_loader())


if __name__ == "__main__":
    main()
