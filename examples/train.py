"""A plain PyTorch training loop made repeatable with two torchrepro lines.

Run it twice; the final parameter digest is the same both times:

    python examples/train.py
    python examples/train.py --seed 12     # another seed, another (repeatable) result

Without the two marked lines, every run ends with different parameters.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import torchrepro  # (1 of 2)


class Stripes(Dataset[tuple[torch.Tensor, int]]):
    """Generated 16x16 images of stripes at one of 4 angles, with noise and random shifts."""

    def __init__(self, size: int = 512) -> None:
        self.angles = [i % 4 for i in range(size)]
        self.phases = torch.linspace(0, 2 * math.pi, size)

    def __len__(self) -> int:
        return len(self.angles)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label = self.angles[index]
        theta = label * math.pi / 4
        y, x = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
        image = torch.sin((x * math.cos(theta) + y * math.sin(theta)) * 1.2 + self.phases[index])
        image = torch.roll(image, shifts=random.randint(-2, 2), dims=1)  # random augmentation
        image = image * float(np.random.uniform(0.7, 1.3)) + 0.6 * torch.randn_like(image)
        return image.unsqueeze(0), label


def parameter_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    torchrepro.seed_everything(args.seed)  # (2 of 2)

    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(64, 4),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(Stripes(), batch_size=32, shuffle=True, num_workers=args.workers)
    for epoch in range(args.epochs):
        correct = total = 0
        loss_sum = 0.0
        for images, labels in loader:
            optimizer.zero_grad()
            logits = model(images)
            loss = nn.functional.cross_entropy(logits, labels)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            total += len(labels)
        print(f"epoch {epoch + 1}: loss {loss_sum / total:.4f}  accuracy {correct / total:.3f}")
    print(f"seed {args.seed}: final parameters {parameter_digest(model)}")


if __name__ == "__main__":
    main()
