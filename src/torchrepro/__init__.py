"""torchrepro: PyTorch training that gives the same result every time, and proof of it."""

from __future__ import annotations
