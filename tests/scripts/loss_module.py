"""A training as users write it: a DataLoader with 2 workers, a model, a loss module.

Batches are dicts ``{"input_ids": 16x16 int64, "labels": 16 int64}``; the model returns
log-probabilities and ``nn.NLLLoss`` takes them. PLANT_NOISE_STEP=k: os.urandom noise in
the model's hidden layer at step k. PLANT_AUGMENT=1: each worker swaps tokens chosen by an
unseeded numpy generator (a different augmentation in every run). No torchrepro calls.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

NOISE_STEP = int(os.environ.get("PLANT_NOISE_STEP", "-1"))
AUGMENT = os.environ.get("PLANT_AUGMENT") == "1"


class Tokens(Dataset[dict[str, torch.Tensor]]):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = (torch.arange(16) * 5 + index * 3) % 32
        if AUGMENT:
            at = np.random.default_rng().integers(16)  # seeded by the OS, never by torchrepro
            ids[at] = 0
        return {"input_ids": ids, "labels": torch.tensor(index % 4)}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, 8)
        self.hidden = nn.Linear(8, 16)
        self.out = nn.Linear(16, 4)
        self.step = 0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.hidden(self.embed(ids).mean(1)))
        if self.step == NOISE_STEP:
            noise = torch.frombuffer(bytearray(os.urandom(4 * h.numel())), dtype=torch.int32)
            h = h + noise.reshape(h.shape).float() * 1e-12
        self.step += 1
        return torch.log_softmax(self.out(h), dim=1)


def main() -> None:
    torch.manual_seed(0)
    model, criterion = Net(), nn.NLLLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(Tokens(), batch_size=16, shuffle=True, num_workers=2)
    for _ in range(2):
        for batch in loader:
            loss = criterion(model(batch["input_ids"]), batch["labels"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


if __name__ == "__main__":
    main()
