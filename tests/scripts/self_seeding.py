"""A small training that seeds itself the way real scripts do; argv[1] picks how.

torch: ``torch.manual_seed(1111)`` then a word_language_model-style loop (no optimizer:
``p.data.add_(p.grad, alpha=-lr)``). numpy, random: ``np.random.seed`` / ``random.seed``.
transformers: ``transformers.set_seed(42)``. loader: ``torch.manual_seed(42)``, then a
shuffling 2-worker DataLoader with random augmentation and dropout. lightning:
``pl.seed_everything(42, workers=True)`` and a Trainer over such a loader. none: no seeding
of its own. internal: no seeding of its own, but torchrepro's (``split_streams``,
``sample_rng`` in the dataset, ``isolate_rng`` around an evaluation, 2 workers).

Every seeding line ends with ``# seeds: MODE``: the tests look the line up there. Prints
the SHA-256 of the final parameters.
"""

from __future__ import annotations

import hashlib
import random
import sys

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

MODE = sys.argv[1]


class Augmented(Dataset[torch.Tensor]):
    def __init__(self, per_sample: bool = False) -> None:
        self.per_sample = per_sample

    def __len__(self) -> int:
        return 32

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.per_sample:
            import torchrepro

            with torchrepro.sample_rng(index):
                return self._draw(index)
        return self._draw(index)

    def _draw(self, index: int) -> torch.Tensor:
        noise = torch.rand(4) + float(np.random.rand()) + random.random()
        return torch.full((4,), float(index)) / 32 + noise


def digest(model: nn.Module) -> str:
    return hashlib.sha256(
        b"".join(p.detach().numpy().tobytes() for p in model.parameters())
    ).hexdigest()


def word_language_model() -> nn.Module:
    model = nn.Linear(4, 2)
    for _ in range(3):
        model.zero_grad()
        model(torch.randn(8, 4)).pow(2).sum().backward()
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-0.1)  # type: ignore[arg-type]
    return model


def loader_training(per_sample: bool = False) -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = DataLoader(Augmented(per_sample), batch_size=4, shuffle=True, num_workers=2)
    for _ in range(2):
        for batch in loader:
            optimizer.zero_grad()
            model(batch).pow(2).mean().backward()
            optimizer.step()
    return model


def lightning_training() -> nn.Module:
    import pytorch_lightning as pl

    pl.seed_everything(42, workers=True)  # seeds: lightning

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 1))

        def training_step(self, batch: torch.Tensor, index: int) -> torch.Tensor:
            return self.net(batch).pow(2).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

        def train_dataloader(self) -> DataLoader[torch.Tensor]:
            return DataLoader(Augmented(), batch_size=4, shuffle=True, num_workers=2)

    module = Module()
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module)
    return module


def main() -> None:
    if MODE == "torch":
        torch.manual_seed(1111)  # seeds: torch
    elif MODE == "numpy":
        np.random.seed(1111)  # seeds: numpy
    elif MODE == "random":
        random.seed(1111)  # seeds: random
    elif MODE == "transformers":
        from transformers import set_seed

        set_seed(42)  # seeds: transformers
    elif MODE == "loader":
        torch.manual_seed(42)  # seeds: loader
    if MODE == "lightning":
        model = lightning_training()
    elif MODE == "loader":
        model = loader_training()
    elif MODE == "internal":
        import torchrepro

        torchrepro.split_streams()
        model = loader_training(per_sample=True)
        with torchrepro.isolate_rng():
            model(torch.randn(2, 4))
    else:
        model = word_language_model()
    print(digest(model))


if __name__ == "__main__":
    main()
