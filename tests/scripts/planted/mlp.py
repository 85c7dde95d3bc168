"""Planted causes in an MLP with dropout; no torchrepro calls.

Usage: python mlp.py PLANT, PLANT one of
  linear-noise     os.urandom noise added to the output of body.3 (a Linear) at step 2
  urandom-dropout  body.5, a hand-written dropout, takes its mask from os.urandom at step 2
  clock-reseed     torch is reseeded from the clock before step 2 (body.2 draws differently)
  nll-loss         the model ends in log_softmax and the loss is an nn.NLLLoss module;
                   os.urandom noise added to body.3's output at step 2
  none             nothing planted
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from plants import STEPS, NoisyLinear, Plant, reseed_from_clock, urandom_keep
from torch import nn

PLANT = Plant(["linear-noise", "urandom-dropout", "clock-reseed", "nll-loss"])


class HandDropout(nn.Module):
    """Dropout written by hand: torch's bernoulli, or os.urandom where the plant fires."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if PLANT.fires("urandom-dropout"):
            return x * urandom_keep(x.shape[-1], self.p)
        keep = torch.empty_like(x).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


def main() -> None:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module(
        "body",
        nn.Sequential(
            nn.Linear(8, 32),
            nn.ReLU(),
            nn.Dropout(0.2),
            NoisyLinear(32, 32, plant=PLANT, names=["linear-noise", "nll-loss"]),
            nn.ReLU(),
            HandDropout(0.2),
        ),
    )
    model.add_module("head", nn.Linear(32, 3))
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy
    if PLANT.name == "nll-loss":
        model.add_module("log_softmax", nn.LogSoftmax(dim=-1))
        criterion = nn.NLLLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.linspace(-1, 1, 16 * 8).reshape(16, 8)
    y = torch.arange(16) % 3
    for step in range(STEPS):
        PLANT.step = step
        if PLANT.fires("clock-reseed"):
            reseed_from_clock()
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
