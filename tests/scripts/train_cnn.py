"""A small CNN training with no torchrepro calls: the recorder must find everything itself.

Environment knobs (for tests): STEPS (default 8); PLANT_LR_FROM=k uses a different learning
rate from step k on; CRASH_AT=k stops the process hard (os._exit) before step k.
"""

import os

import torch
from torch import nn

torch.manual_seed(0)
steps = int(os.environ.get("STEPS", "8"))
plant = int(os.environ.get("PLANT_LR_FROM", "-1"))
crash = int(os.environ.get("CRASH_AT", "-1"))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


model = Net()
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
data = torch.randn(steps, 16, 1, 8, 8)
labels = torch.randint(0, 3, (steps, 16))
for step in range(steps):
    if step == crash:
        os._exit(7)
    if step == plant:
        for group in opt.param_groups:
            group["lr"] = 0.05
    loss = nn.functional.cross_entropy(model(data[step]), labels[step])
    opt.zero_grad()
    loss.backward()
    opt.step()
print("trained", steps)
