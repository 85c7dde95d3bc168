"""Lightning over a loader of unknown length (an IterableDataset), so that its data fetcher
fetches a batch ahead of the one it trains. One epoch of 6 batches; SEEN: see seen.py. No
torchrepro calls.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytorch_lightning as pl
import torch
from lightning_train import Model
from seen import Indexed
from torch.utils.data import DataLoader, IterableDataset


class Stream(IterableDataset[tuple[int, torch.Tensor, torch.Tensor]]):
    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        samples = Indexed(96)
        for i in torch.randperm(96, generator=torch.Generator().manual_seed(0)).tolist():
            yield samples[i]


def main() -> None:
    warnings.filterwarnings("ignore")  # Lightning's advice on workers and logging
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Model(), DataLoader(Stream(), batch_size=16))


if __name__ == "__main__":
    main()
