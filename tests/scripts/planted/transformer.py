"""Planted causes in a small transformer encoder with attention dropout; no torchrepro calls.

Usage: python transformer.py PLANT, PLANT one of
  clock-reseed  torch is reseeded from the clock before step 2 (the attention dropout of
                encoder.layers.0.self_attn draws differently)
  linear-noise  os.urandom noise added to the output of encoder.layers.1.linear1 at step 2
  none          nothing planted
"""

from __future__ import annotations

import torch
from plants import STEPS, NoisyLinear, Plant, reseed_from_clock
from torch import nn

PLANT = Plant(["clock-reseed", "linear-noise"])
VOCAB, WIDTH, LENGTH = 32, 16, 6


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        layer = nn.TransformerEncoderLayer(WIDTH, 2, 32, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        linear1 = NoisyLinear(WIDTH, 32, plant=PLANT, names=["linear-noise"])
        linear1.load_state_dict(self.encoder.layers[1].linear1.state_dict())
        self.encoder.layers[1].linear1 = linear1
        self.head = nn.Linear(WIDTH, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


def main() -> None:
    torch.manual_seed(0)
    model = Encoder()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = (torch.arange(8 * LENGTH).reshape(8, LENGTH) * 5) % VOCAB
    labels = torch.arange(8) % 2
    for step in range(STEPS):
        PLANT.step = step
        if PLANT.fires("clock-reseed"):
            reseed_from_clock()
        loss = nn.functional.cross_entropy(model(tokens), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
