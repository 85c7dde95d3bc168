"""``torchrepro demo``: the problem, the starting recipe and torchrepro, side by side.

One small CNN learns to tell six noisy shapes apart from images the demo renders itself
(no download), with random augmentation in ``__getitem__`` (Python ``random``, numpy and
torch each draw) and a 2-worker DataLoader. It is trained under three setups, twice each,
every run in a fresh process as two real trainings would be:

1. ``none``: no seeding at all;
2. ``recipe``: the starting recipe users copy, ``seed_everything(11)`` plus its
   ``worker_init_fn(worker_id, rank, seed)`` through ``functools.partial``;
3. ``torchrepro``: ``torchrepro.seed_everything(11)``.

Each run reports its held-out accuracy and loss per epoch, a digest of its final
parameters and, per epoch and loader worker, a digest of the worker's first augmentation
draws. The parent prints one table (accuracy, loss, spread, bitwise identity, distinct
worker streams), plots the six accuracy curves and gives a verdict on setup 3.

Every number printed is measured by the run that prints it.

The package: ``workload`` (the data, the model, the setups' seeding, one training),
``runs`` (the runs as processes, ``run_demo``), ``report`` (what they measured, the table,
the verdict) and ``plot`` (the accuracy curves). ``python -m torchrepro.demo --worker SETUP
...`` is one run.
"""

from __future__ import annotations

from torchrepro.demo.report import DemoReport
from torchrepro.demo.runs import run_demo
from torchrepro.demo.workload import DemoRunError, Scale

__all__ = ["DemoReport", "DemoRunError", "Scale", "run_demo"]
