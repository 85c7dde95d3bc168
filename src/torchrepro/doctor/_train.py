"""The training `torchrepro doctor` records twice with `torchrepro check`: 20 steps of a small
network with a convolution, batch norm, dropout and a linear head, on the device given.

    torchrepro check --deterministic -- python -m torchrepro.doctor._train --device cuda
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from torch import nn


def main(argv: Sequence[str] | None = None) -> int:
    """Trains `--steps` SGD steps on batches drawn from torch's global generator."""
    parser = argparse.ArgumentParser(prog="python -m torchrepro.doctor._train")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Flatten(),
        nn.Linear(16 * 16 * 16, 10),
    ).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(args.steps):
        x = torch.randn(32, 3, 16, 16, device=device)
        y = torch.randint(0, 10, (32,), device=device)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
