"""What the planted-cause scripts share: the step a plant fires at, and the plants themselves.

Each script in this folder is a plain training (no torchrepro calls) of one model kind; its
first argument names the plant, which fires at optimizer step ``STEP`` (0-based) of
``STEPS``, so two runs part there. The checker knows nothing of them: it sees a script.

Noise and masks from ``os.urandom`` are made with ``torch.frombuffer`` on a Python array,
which dispatches no ATen op: the first op that sees them is the one that mixes them into
the model's values (``aten.add.Tensor``, ``aten.mul.Tensor``).
"""

from __future__ import annotations

import os
import sys
import time
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

STEP = 2
STEPS = 4
COUNTER_DIR = "PLANTED_COUNTER_DIR"  # set by the test: a fresh folder per case


class Plant:
    """The plant chosen on the command line, and the step the training is at."""

    def __init__(self, choices: Sequence[str]) -> None:
        name = sys.argv[1] if len(sys.argv) > 1 else "none"
        if name not in (*choices, "none"):
            raise SystemExit(f"plant must be one of {', '.join(choices)}, none; got {name!r}")
        self.name = name
        self.step = 0

    def fires(self, name: str) -> bool:
        """Whether plant ``name`` was chosen and the training is at step STEP."""
        return self.name == name and self.step == STEP


def urandom_noise(features: int, scale: float = 1e-7) -> torch.Tensor:
    """``features`` values in [0, 255 * scale] from os.urandom, made outside torch's ops."""
    values = array("f", (b * scale for b in os.urandom(features)))
    return torch.frombuffer(values, dtype=torch.float32)


def urandom_keep(features: int, p: float) -> torch.Tensor:
    """A dropout mask (1 / (1 - p) kept, 0 dropped) from os.urandom, outside torch's ops."""
    keep = array("f", (float(b >= 256 * p) / (1 - p) for b in os.urandom(features)))
    return torch.frombuffer(keep, dtype=torch.float32)


def reseed_from_clock() -> None:
    """What a script that reseeds from the time does: the next draws differ between runs."""
    torch.manual_seed(time.time_ns())


def alternating_threads() -> int:
    """Sets 1 thread in the 1st, 3rd, ... process started, 2 in the others.

    Processes count themselves by creating numbered files in ``$PLANTED_COUNTER_DIR``
    (exclusive creation: processes started side by side get distinct numbers).
    """
    folder = Path(os.environ[COUNTER_DIR])
    index = 0
    while True:
        try:
            (folder / str(index)).open("x").close()
            break
        except FileExistsError:
            index += 1
    threads = 1 + index % 2
    torch.set_num_threads(threads)
    return threads


class NoisyLinear(nn.Linear):
    """A Linear whose output gets os.urandom noise when ``plant`` fires ``name``."""

    def __init__(self, *args: Any, plant: Plant, names: Sequence[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plant, self.names = plant, tuple(names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if any(self.plant.fires(name) for name in self.names):
            y = y + urandom_noise(self.out_features)
        return y
