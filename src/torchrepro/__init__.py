"""torchrepro: PyTorch training that gives the same result every time, and proof of it."""

from __future__ import annotations

from torchrepro.fingerprint import Digest, fingerprint

__all__ = ["Digest", "fingerprint"]
