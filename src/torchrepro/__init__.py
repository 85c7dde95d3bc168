"""torchrepro: PyTorch training that gives the same result every time, and proof of it."""

from __future__ import annotations

from torchrepro.compare import RecordDiff, diff_records
from torchrepro.env import environment
from torchrepro.fingerprint import Digest, fingerprint
from torchrepro.record import Record, Recorder, log, read_record, record

__all__ = [
    "Digest",
    "Record",
    "RecordDiff",
    "Recorder",
    "diff_records",
    "environment",
    "fingerprint",
    "log",
    "read_record",
    "record",
]
