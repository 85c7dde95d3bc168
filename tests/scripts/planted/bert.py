"""Planted causes in a tiny BERT built from a config (HF transformers); no torchrepro calls.

A plain PyTorch loop over BertForSequenceClassification: 8 sequences, 4 steps, nothing
downloaded. Usage: python bert.py PLANT, PLANT one of
  dense-noise  os.urandom noise added to the output of bert.encoder.layer.1.output.dense
               (a Linear) at step 2
  none         nothing planted
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from plants import STEPS, NoisyLinear, Plant  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification  # noqa: E402

PLANT = Plant(["dense-noise"])
CONFIG = BertConfig(
    vocab_size=64,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=16,
    num_labels=2,
)


def main() -> None:
    torch.manual_seed(0)
    model = BertForSequenceClassification(CONFIG)
    output = model.bert.encoder.layer[1].output
    dense = NoisyLinear(32, 16, plant=PLANT, names=["dense-noise"])
    dense.load_state_dict(output.dense.state_dict())
    output.dense = dense
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    input_ids = (torch.arange(8 * 8).reshape(8, 8) * 7) % CONFIG.vocab_size
    labels = torch.arange(8) % 2
    for step in range(STEPS):
        PLANT.step = step
        loss = model(input_ids=input_ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
