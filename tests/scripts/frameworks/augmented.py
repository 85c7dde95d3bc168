"""The augmented dataset of the *_resume.py scripts; no torchrepro calls."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset


class Augmented(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __len__(self) -> int:
        return 224

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.sin(torch.arange(16) * 0.3 + index)
        x = x + 0.1 * torch.randn(16)  # noise
        if random.random() < 0.5:  # flip
            x = x.flip(0)
        x = x * float(np.random.uniform(0.9, 1.1))  # scale
        return x, torch.tensor(float(index % 3))
