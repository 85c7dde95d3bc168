"""A torch.compile'd model (default mode) trained with SGD; no torchrepro calls.

STEPS (default 6). COMPILE_BACKEND picks the backend (default: torch's, inductor).
PLANT_NOISE_STEP=k adds os.urandom noise to the batch at step k, before the compiled model
sees it. Prints the number of steps and of graphs dynamo compiled (a recorder whose hooks
changed the graphs' guards would make it compile twice).
"""

from __future__ import annotations

import os

import torch
from torch import nn

STEPS = int(os.environ.get("STEPS", "6"))
NOISE_STEP = int(os.environ.get("PLANT_NOISE_STEP", "-1"))
BACKEND = os.environ.get("COMPILE_BACKEND", "inductor")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def main() -> None:
    torch.manual_seed(0)
    model = Net()
    compiled = torch.compile(model, backend=BACKEND)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.randn(STEPS, 8, 4)
    labels = torch.randint(0, 2, (STEPS, 8))
    for step in range(STEPS):
        x = data[step]
        if step == NOISE_STEP:
            noise = torch.frombuffer(bytearray(os.urandom(4 * x.numel())), dtype=torch.int32)
            x = x + noise.reshape(x.shape).float() * 1e-12
        loss = nn.functional.cross_entropy(compiled(x), labels[step])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    from torch._dynamo.utils import counters

    print("trained", STEPS, "graphs", counters["stats"]["unique_graphs"])


if __name__ == "__main__":
    main()
