"""A training that honours `torchrepro check --resume-at K`; no torchrepro seeding of its own.

With FORGET_TORCHREPRO_STATE=1 its resume restores model and optimizer but not
torchrepro's state (RNG, loader position): the mistake --resume-at is there to catch.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchrepro


def main() -> None:
    folder = Path(os.environ["TORCHREPRO_CHECKPOINT_DIR"])
    stop_at = int(os.environ.get("TORCHREPRO_STOP_AT", "0"))
    data = TensorDataset(torch.linspace(-1, 1, 96).reshape(48, 2), torch.arange(48) % 2)
    loader = DataLoader(data, batch_size=8, shuffle=True)
    model = nn.Sequential(nn.Linear(2, 8), nn.Dropout(0.3), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step, first_epoch = 0, 0
    if os.environ.get("TORCHREPRO_RESUME") == "1":
        checkpoint = torchrepro.load_checkpoint(folder / "checkpoint.pt")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if not os.environ.get("FORGET_TORCHREPRO_STATE"):
            torchrepro.load_state_dict(checkpoint["torchrepro"])
        step, first_epoch = checkpoint["step"], checkpoint["epoch"]
    for epoch in range(first_epoch, 3):
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            step += 1
            if step == stop_at:
                folder.mkdir(parents=True, exist_ok=True)
                state = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "epoch": epoch,
                    "torchrepro": torchrepro.state_dict(),
                }
                torchrepro.save_checkpoint(folder / "checkpoint.pt", state)
                return


if __name__ == "__main__":
    main()
