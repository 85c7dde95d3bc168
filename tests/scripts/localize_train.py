"""A small training with dropout whose runs part where PLANT says; no torchrepro calls.

The model: ``encoder`` (Linear, ReLU, Dropout), ``blocks`` (two blocks of ``ff``, a
Linear, and ``drop``), ``head``. PLANT=noise: from step 2 on, a forward hook on
``blocks.1.ff`` adds os.urandom noise to its output. PLANT=empty: from step 1 on,
``blocks.1`` reads a ``torch.empty`` buffer whose last columns no op wrote (what the memory
held is set through numpy, past torch's ops, to os.urandom bytes: it differs in every run,
as garbage may).
PLANT=reseed: at step 2 a generator of the script is reseeded from the clock; ``blocks.0``
draws noise from it. STARTS_DIR: every start of the script is counted there; REPLAYS=crash:
the third and later starts (check's replays) fail at step 1; REPLAYS=part-early: their
noise starts at step 1. The script seeds torch itself.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

PLANT = os.environ.get("PLANT", "")
STEPS = 4
generator = torch.Generator().manual_seed(1)


def urandom_like(x: torch.Tensor) -> torch.Tensor:
    noise = torch.frombuffer(bytearray(os.urandom(4 * x.numel())), dtype=torch.int32)
    return noise.reshape(x.shape).to(x.dtype) * 1e-12


class Block(nn.Module):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index
        self.calls = 0
        self.ff = nn.Linear(16, 16)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(self.ff(x))
        if PLANT == "empty" and self.index == 1 and self.calls > 0:
            buffer = torch.empty(y.shape[0], 24)
            held = np.frombuffer(os.urandom(4 * 8 * y.shape[0]), np.float32).reshape(-1, 8)
            buffer.numpy()[:, 16:] = np.nan_to_num(held)  # what the memory held: no op wrote it
            buffer[:, :16] = y
            y = y + buffer.sum(1, keepdim=True).clamp(-1, 1) * 1e-3
        if PLANT == "reseed" and self.index == 0:
            y = y + torch.randn(y.shape, generator=generator) * 1e-6
        self.calls += 1
        return x + y


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2))
        self.blocks = nn.ModuleList([Block(0), Block(1)])
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encoder(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def main() -> None:
    starts = 0
    if os.environ.get("STARTS_DIR"):
        folder = Path(os.environ["STARTS_DIR"])
        (folder / str(os.getpid())).touch()
        starts = len(list(folder.iterdir()))
    replay = starts > 2 and os.environ.get("REPLAYS")
    first_noise = 1 if replay == "part-early" else 2
    torch.manual_seed(0)
    model = Net()
    step = 0

    def plant(module: nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
        return output + urandom_like(output) if PLANT == "noise" and step >= first_noise else output

    model.blocks[1].ff.register_forward_hook(plant)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(8, 4), torch.tensor([0, 1] * 4)
    for step in range(STEPS):
        if replay == "crash" and step == 1:
            raise RuntimeError(f"planted replay crash (start {starts})")
        if PLANT == "reseed" and step == 2:
            generator.manual_seed(time.time_ns())
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
