"""A three-step training for check's verdicts; PLANT chooses what differs between runs.

PLANT=op: from step 1 on, module `mixer` calls the custom op torchrepro_tests::noisy, which
adds os.urandom noise to its input: an op dispatched like any ATen op that gives a different
output from identical inputs. PLANT=input: from step 1 on, module `mixer` adds os.urandom
noise, made outside torch's ops, to its output. (Step 1, not 0: the trace of step 0 starts
at process start and would also see parameters allocated with torch.empty.)
PLANT=batch: the dataset adds os.urandom noise to its features, so the batch differs at
step 0. PLANT=rng: run 2 (TORCHREPRO_RUN) draws one more number from Python's `random`
before training. PLANT=clock: module `mixer` adds noise drawn from torch's (seeded) RNG, and
at step 1, after its draws, the script reseeds torch from the clock: torch's RNG state
differs from step 1, the noise (and so what is computed) from step 2. PLANT=set-order: the
samples come in the order of a set of strings (salted str hashing). No torchrepro calls: the
script seeds torch itself, so runs under --no-seed start alike.
"""

from __future__ import annotations

import os
import random
import time

import torch
from torch import nn

PLANT = os.environ.get("PLANT", "")
RUN = int(os.environ.get("TORCHREPRO_RUN", "1"))
STEPS = 3
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


def urandom_like(x: torch.Tensor) -> torch.Tensor:
    """Noise of x's shape from os.urandom: no torch RNG, no seed reaches it."""
    noise = torch.frombuffer(bytearray(os.urandom(4 * x.numel())), dtype=torch.int32)
    return noise.reshape(x.shape).to(x.dtype) * 1e-12


@torch.library.custom_op("torchrepro_tests::noisy", mutates_args=())
def noisy(x: torch.Tensor) -> torch.Tensor:
    return x + urandom_like(x)


noisy.register_autograd(lambda ctx, grad: grad)


class Mixer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        self.calls += 1
        if PLANT == "op" and self.calls > 1:
            return torch.ops.torchrepro_tests.noisy(y)
        if PLANT == "input" and self.calls > 1:
            return y + urandom_like(y)
        if PLANT == "clock":
            return y + torch.randn_like(y) * 1e-3
        return y


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.mixer = Mixer()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mixer(self.encoder(x)))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    words = list(set(WORDS)) if PLANT == "set-order" else WORDS
    features = torch.tensor([[len(w), ord(w[0]) / 100, ord(w[-1]) / 100, 1.0] for w in words])
    if PLANT == "batch":
        features = features + urandom_like(features)
    return features, torch.tensor([len(w) % 2 for w in words])


def main() -> None:
    if PLANT == "rng" and RUN == 2:
        random.random()
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = batch()
    for step in range(STEPS):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        if PLANT == "clock" and step == 1:
            torch.manual_seed(time.time_ns())
        optimizer.step()


if __name__ == "__main__":
    main()
