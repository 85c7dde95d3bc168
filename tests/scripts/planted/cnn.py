"""Planted causes in a CNN with batch norm, fed by a DataLoader worker; no torchrepro calls.

The recipe: 8 images, batches of 4, 2 epochs (4 steps), one real worker process; the
convolutional backbone is frozen for the first epoch (the head warms up) and trained from
step 2 on. Usage: python cnn.py PLANT, PLANT one of
  conv-noise      os.urandom noise added to the output of features.3 (a Conv2d) at step 2
  worker-augment  from epoch 1 (step 2) on, the worker flips and jitters images with a
                  numpy generator nobody seeds (np.random.default_rng(), made in the worker)
  threads         one run trains with 1 thread, the next with 2 (counted in
                  $PLANTED_COUNTER_DIR); the convolutions' weight gradients, computed from
                  step 2 on, sum their parts in a different order
  none            nothing planted
"""

from __future__ import annotations

import numpy as np
import torch
from plants import STEPS, Plant, alternating_threads, urandom_noise
from torch import nn
from torch.utils.data import DataLoader, Dataset

PLANT = Plant(["conv-noise", "worker-augment", "threads"])


class NoisyConv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if PLANT.fires("conv-noise"):
            y = y + urandom_noise(y.shape[-1])
        return y


class Images(Dataset[tuple[torch.Tensor, int]]):
    def __init__(self) -> None:
        self.images = torch.linspace(0, 1, 8 * 3 * 8 * 8).reshape(8, 3, 8, 8).sin()
        self.augment = False
        self.rng: np.random.Generator | None = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.augment:
            if self.rng is None:
                self.rng = np.random.default_rng()  # in the worker: seeded from the OS
            if self.rng.random() < 0.5:
                image = image.flip(-1)
            image = image + float(self.rng.normal(0, 0.01))
        return image, index % 2


def main() -> None:
    if PLANT.name == "threads":
        alternating_threads()
    torch.manual_seed(0)
    features = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        NoisyConv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    model = nn.Sequential()
    model.add_module("features", features)
    model.add_module("head", nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = Images()
    loader = DataLoader(data, batch_size=4, num_workers=1)
    step = 0
    for epoch in range(STEPS // len(loader)):
        features.requires_grad_(epoch > 0)
        data.augment = PLANT.name == "worker-augment" and epoch > 0
        for x, y in loader:
            PLANT.step = step
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1


if __name__ == "__main__":
    main()
