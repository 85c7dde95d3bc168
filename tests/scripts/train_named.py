"""A tiny training named on its command line, so one command can run several different ones.

``train_named.py NAME [noise] [only-run-1] [steps=N] [sleep=S]``: the data depends on
NAME, so trainings of two names differ; ``noise`` adds os.urandom noise in the forward of
module ``1`` from step 1 on (so two runs part at step 1); ``only-run-1`` trains only in
run 1 of a check (``TORCHREPRO_RUN``), else exits at once; ``sleep``: seconds per step.
No torchrepro calls.
"""

from __future__ import annotations

import os
import sys
import time

import torch
from torch import nn

NAME, ARGS = sys.argv[1], sys.argv[2:]
OPTIONS = dict(arg.split("=", 1) for arg in ARGS if "=" in arg)


class Noisy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        if "noise" in ARGS and self.calls >= 1:
            noise = torch.frombuffer(bytearray(os.urandom(4 * y.numel())), dtype=torch.int32)
            y = y + noise.reshape(y.shape).float() * 1e-12
        self.calls += 1
        return y


def main() -> None:
    if "only-run-1" in ARGS and os.environ.get("TORCHREPRO_RUN") != "1":
        return
    model = nn.Sequential(nn.Linear(3, 4), Noisy(), nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(int(OPTIONS.get("steps", "6"))):
        optimizer.zero_grad()
        model(torch.randn(8, 3) + ord(NAME[0]) / 100).square().mean().backward()
        optimizer.step()
        time.sleep(float(OPTIONS.get("sleep", "0")))


if __name__ == "__main__":
    main()
