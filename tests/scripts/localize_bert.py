"""A tiny BERT (transformers, built from a config: nothing downloaded) trained in a plain
loop with attention and hidden dropout; from step 2 on, a forward hook on
``bert.encoder.layer.1.output.dense`` adds os.urandom noise to its output. No torchrepro
calls; the script seeds torch itself.
"""

from __future__ import annotations

import os

import torch
from transformers import BertConfig, BertForSequenceClassification

STEPS = 3


def main() -> None:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    model = BertForSequenceClassification(config)
    calls = []

    def plant(module: torch.nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
        calls.append(1)  # one forward per step
        if len(calls) <= 2:
            return output
        noise = torch.frombuffer(bytearray(os.urandom(4 * output.numel())), dtype=torch.int32)
        return output + noise.reshape(output.shape).float() * 1e-12

    model.bert.encoder.layer[1].output.dense.register_forward_hook(plant)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids, labels = torch.randint(0, 64, (4, 16)), torch.randint(0, 2, (4,))
    model.train()
    for _ in range(STEPS):
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
