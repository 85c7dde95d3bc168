"""Planted causes in a 2-layer LSTM classifier of short sentences; no torchrepro calls.

8 sentences from a DataLoader (its collate function encodes them), batches of 4, 2 epochs
(4 steps). Usage: python lstm.py PLANT, PLANT one of
  set-order     epoch 1 (from step 2) loads the sentences deduplicated through a set:
                their order follows str hashing (run it with --no-seed, which leaves
                PYTHONHASHSEED unset)
  empty-state   at step 2 the initial cell state is made with torch.empty, not zeros
  clock-reseed  torch is reseeded from the clock before step 2 (the dropout between the
                LSTM's layers draws differently)
  none          nothing planted
"""

from __future__ import annotations

import torch
from plants import STEPS, Plant, reseed_from_clock
from torch import nn
from torch.utils.data import DataLoader

PLANT = Plant(["set-order", "empty-state", "clock-reseed"])
SENTENCES = [
    "the cat sat", "a dog ran far", "birds sing at dawn", "rain fell all night",
    "the sun rose", "we walked home", "snow covers hills", "an owl hoots",
]  # fmt: skip
VOCAB = {word: i for i, word in enumerate(sorted({w for s in SENTENCES for w in s.split()}))}
LENGTH, LAYERS, HIDDEN = 4, 2, 16


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(len(VOCAB), 8)
        self.lstm = nn.LSTM(8, HIDDEN, num_layers=LAYERS, dropout=0.2, batch_first=True)
        self.head = nn.Linear(HIDDEN, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        shape = (LAYERS, len(tokens), HIDDEN)
        c0 = torch.empty(shape) if PLANT.fires("empty-state") else torch.zeros(shape)
        h0 = torch.zeros(shape)
        out, _ = self.lstm(self.embed(tokens), (h0, c0))
        return self.head(out[:, -1])


def encode(sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [[VOCAB[w] for w in s.split()][:LENGTH] for s in sentences]
    tokens = torch.tensor([row + [0] * (LENGTH - len(row)) for row in ids])
    return tokens, torch.tensor([len(s) % 2 for s in sentences])


def main() -> None:
    torch.manual_seed(0)
    model = Classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = 0
    for epoch in range(STEPS // 2):
        sentences = SENTENCES
        if PLANT.name == "set-order" and epoch > 0:
            sentences = list(set(SENTENCES))
        for tokens, labels in DataLoader(sentences, batch_size=4, collate_fn=encode):
            PLANT.step = step
            if PLANT.fires("clock-reseed"):
                reseed_from_clock()
            loss = nn.functional.cross_entropy(model(tokens), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1


if __name__ == "__main__":
    main()
