"""torchrepro: PyTorch training that gives the same result every time, and proof of it."""

from __future__ import annotations

from torchrepro.env import environment
from torchrepro.fingerprint import Digest, fingerprint
from torchrepro.record import Record, Recorder, log, read_record, record

__all__ = [
    "Digest",
    "Record",
    "Recorder",
    "environment",
    "fingerprint",
    "log",
    "read_record",
    "record",
]
