"""A small training with a 2-worker DataLoader and random augmentation in __getitem__.

Usage: python train_aug.py [--seed S] [--plain] [--workers N]
Prints the SHA-256 of the final parameters. With --plain it calls no torchrepro function
(for running under `torchrepro run`).
"""

from __future__ import annotations

import argparse
import hashlib
import random

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class Noisy(Dataset[tuple[torch.Tensor, int]]):
    def __init__(self) -> None:
        base = torch.Generator().manual_seed(0)
        self.images = torch.rand(64, 1, 8, 8, generator=base)
        self.labels = (self.images.mean(dim=(1, 2, 3)) > 0.5).long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if random.random() < 0.5:
            image = image.flip(-1)
        image = image + float(np.random.normal(0, 0.05)) + 0.05 * torch.randn_like(image)
        return image, int(self.labels[index])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--plain", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if not args.plain:
        import torchrepro

        torchrepro.seed_everything(args.seed)
    torch.set_num_threads(1)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * 6 * 6, 2)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(Noisy(), batch_size=16, shuffle=True, num_workers=args.workers)
    for _ in range(2):
        for images, labels in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.numpy().tobytes())
    print(digest.hexdigest())


if __name__ == "__main__":
    main()
