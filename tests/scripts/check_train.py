"""A small training with no torchrepro calls and causes of divergence planted by variables.

STEPS: optimizer steps (default 12). PLANT_NOISE_STEP=k: module `noisy` adds os.urandom
noise in its forward at step k. PLANT_SET_ORDER=1: the data order comes from iterating a
set of strings (salted str hashing). PLANT_THREADS=1: each run uses a different thread
count. PLANT_CRASH_STEP=k: raise at step k. PIDDIR: write this process's pid there.
STEP_SLEEP: seconds to sleep per step.
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn

STEPS = int(os.environ.get("STEPS", "12"))
NOISE_STEP = int(os.environ.get("PLANT_NOISE_STEP", "-1"))
CRASH_STEP = int(os.environ.get("PLANT_CRASH_STEP", "-1"))
RUN = int(os.environ.get("TORCHREPRO_RUN", "1"))


class Noisy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 16)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        if self.calls == NOISE_STEP:
            noise = torch.frombuffer(bytearray(os.urandom(4 * y.numel())), dtype=torch.int32)
            y = y + noise.reshape(y.shape).float() * 1e-12
        self.calls += 1
        return y


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 16), nn.ReLU())
        self.noisy = Noisy()
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.noisy(self.encoder(x)))


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    order = list(set(words)) if os.environ.get("PLANT_SET_ORDER") else words
    features = torch.tensor([[len(w), ord(w[0]) / 100, ord(w[-1]) / 100, 1.0] for w in order])
    labels = torch.tensor([len(w) % 2 for w in order])
    return [(features[i : i + 4], labels[i : i + 4]) for i in (0, 4)]


def main() -> None:
    if os.environ.get("PIDDIR"):
        open(os.path.join(os.environ["PIDDIR"], str(os.getpid())), "w").close()
    if os.environ.get("PLANT_THREADS"):
        torch.set_num_threads(RUN)
    torch.manual_seed(0)  # the script's own seeding, so --no-seed runs start alike
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    data = batches()
    for step in range(STEPS):
        if step == CRASH_STEP:
            raise RuntimeError(f"planted crash at step {step}")
        x, y = data[step % 2]
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        time.sleep(float(os.environ.get("STEP_SLEEP", "0")))


if __name__ == "__main__":
    main()
