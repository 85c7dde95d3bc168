"""A word-language-model loop as pytorch/examples writes it: no optimizer, `p.data.add_`.

The model is an LSTM language model with dropout; each step clips the gradients and
updates the weights by hand; each epoch ends with an evaluation under no_grad. EPOCHS
(default 2) of BATCHES (default 4) steps. PLANT_NOISE_STEP=k adds os.urandom noise at step k
(counted over epochs), in the forward pass, or with PLANT_NOISE_IN=update in the update.
PARAMS_OUT=file: the digests of the parameters at the end are written there.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

EPOCHS = int(os.environ.get("EPOCHS", "2"))
BATCHES = int(os.environ.get("BATCHES", "4"))
NOISE_STEP = int(os.environ.get("PLANT_NOISE_STEP", "-1"))
NOISE_IN = os.environ.get("PLANT_NOISE_IN", "forward")
NTOKENS, BPTT, BSZ, LR = 20, 5, 3, 2.0


def noise_like(t: torch.Tensor) -> torch.Tensor:
    raw = torch.frombuffer(bytearray(os.urandom(4 * t.numel())), dtype=torch.int32)
    return raw.reshape(t.shape).float() * 1e-12


class RNNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.2)
        self.encoder = nn.Embedding(NTOKENS, 8)
        self.rnn = nn.LSTM(8, 8, 2, dropout=0.2)
        self.decoder = nn.Linear(8, NTOKENS)
        self.noise = False

    def forward(
        self, input: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        if self.noise:
            output = output + noise_like(output)
        decoded = self.decoder(output).view(-1, NTOKENS)
        return nn.functional.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz: int) -> tuple[torch.Tensor, torch.Tensor]:
        weight = next(self.parameters())
        return (weight.new_zeros(2, bsz, 8), weight.new_zeros(2, bsz, 8))


def repackage_hidden(h: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(v.detach() for v in h)


def main() -> None:
    torch.manual_seed(1111)  # the example seeds itself
    corpus = torch.randint(0, NTOKENS, ((BATCHES + 1) * BPTT + 1, BSZ))
    model = RNNModel()
    criterion = nn.NLLLoss()
    step = 0
    for _ in range(EPOCHS):
        model.train()
        hidden = model.init_hidden(BSZ)
        for i in range(0, BATCHES * BPTT, BPTT):
            data, targets = corpus[i : i + BPTT], corpus[i + 1 : i + 1 + BPTT].reshape(-1)
            model.zero_grad()
            hidden = repackage_hidden(hidden)
            model.noise = step == NOISE_STEP and NOISE_IN == "forward"
            output, hidden = model(data, hidden)
            loss = criterion(output, targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-LR)
                if step == NOISE_STEP and NOISE_IN == "update":
                    p.data.add_(noise_like(p.data))
            step += 1
        model.eval()
        with torch.no_grad():
            hidden = model.init_hidden(BSZ)
            output, hidden = model(corpus[-BPTT - 1 : -1], hidden)
            val_loss = criterion(output, corpus[-BPTT:].reshape(-1)).item()
    if os.environ.get("PARAMS_OUT"):
        from torchrepro.digests import fingerprint

        final = {name: str(fingerprint(p)) for name, p in model.named_parameters()}
        with open(os.environ["PARAMS_OUT"], "w") as file:
            json.dump(final, file)
    print(f"trained {step} steps, last validation loss {val_loss:.4f}")


if __name__ == "__main__":
    main()
