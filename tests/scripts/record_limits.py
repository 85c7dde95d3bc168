"""A training recorded under a file-size limit (RLIMIT_FSIZE), as a full disk would stop it.

argv: RECORD_PATH STEPS [LIMIT_BYTES]. With TORCHREPRO_RECORD set (under check) the
bootstrap records and RECORD_PATH is ignored; LIMIT_BYTES applies only when
LIMIT_IN_RUN is unset or names this run (TORCHREPRO_RUN). Prints the final weight's
digest: the training went on whatever happened to its record.
"""

from __future__ import annotations

import os
import resource
import signal
import sys

import torch

import torchrepro

path, steps = sys.argv[1], int(sys.argv[2])
limit = int(sys.argv[3]) if len(sys.argv) > 3 else None
wanted = os.environ.get("LIMIT_IN_RUN")
if limit is not None and wanted in (None, os.environ.get("TORCHREPRO_RUN")):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
torch.manual_seed(0)
model = torch.nn.Linear(64, 64)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
recorder = None if os.environ.get("TORCHREPRO_RECORD") else torchrepro.record(path)
for _ in range(steps):
    opt.zero_grad()
    model(torch.randn(8, 64)).pow(2).mean().backward()
    opt.step()
if recorder is not None:
    recorder.close()
print(torchrepro.fingerprint(model.weight))
