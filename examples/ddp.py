"""DistributedDataParallel on CPU (gloo) that repeats bit for bit, and resumes exactly.

    torchrun --standalone --nproc-per-node 2 examples/ddp.py --workdir runs/a
    torchrun --standalone --nproc-per-node 2 examples/ddp.py --workdir runs/b --stop-at 7
    torchrun --standalone --nproc-per-node 2 examples/ddp.py --workdir runs/b --resume
    diff runs/a/steps.rank1.txt runs/b/steps.rank1.txt                    # identical
    torchrepro check -- torchrun --standalone --nproc-per-node 2 examples/ddp.py
    torchrepro check --resume-at 7 -- torchrun --standalone --nproc-per-node 2 examples/ddp.py

Each rank appends ``step <i> <sha256 of its parameters>`` to DIR/steps.rank<r>.txt after
every optimizer step and saves its own checkpoint, DIR/checkpoint.rank<r>.pt. The model is
built right after ``seed_everything``, so it is the same on every rank; wrapping it in DDP
gives every rank its own dropout and augmentation streams; the DistributedSampler's order
comes from the root seed. Rank 0 prints the final digest.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

import torchrepro

EPOCHS = 2
SAMPLES = 64
BATCH = 4


class Points(Dataset[tuple[torch.Tensor, int]]):
    """Two noisy clusters; each sample gets random jitter from torch and numpy when loaded."""

    def __init__(self) -> None:
        generator = torchrepro.torch_generator("points")  # the same data on every rank
        self.labels = torch.randint(2, (SAMPLES,), generator=generator)
        self.points = torch.randn(SAMPLES, 8, generator=generator) + 2.0 * self.labels[:, None]

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        # Augmentation from the global generators: each rank's own stream after the DDP wrap.
        jitter = 0.1 * torch.randn(8) + torch.from_numpy(np.random.normal(0, 0.01, 8)).float()
        return self.points[index] + jitter, int(self.labels[index])


def digest(model: nn.Module) -> str:
    hasher = hashlib.sha256()
    for parameter in model.parameters():
        hasher.update(parameter.detach().cpu().contiguous().numpy().tobytes())
    return hasher.hexdigest()


def free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    # The defaults follow `torchrepro check` (each run its own folder) and its
    # `--resume-at K` protocol (see examples/resume.py).
    env = os.environ
    default_dir = env.get("TORCHREPRO_CHECKPOINT_DIR")
    parser.add_argument("--workdir", type=Path, default=default_dir)
    parser.add_argument("--stop-at", type=int, default=env.get("TORCHREPRO_STOP_AT"))
    parser.add_argument(
        "--resume", action="store_true", default=env.get("TORCHREPRO_RESUME") == "1"
    )
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    if args.workdir is None:
        args.workdir = Path(tempfile.mkdtemp(prefix="torchrepro-ddp-"))
    if "RANK" not in env:  # started without torchrun: one rank, on this machine
        print("no RANK in the environment: running 1 rank; use torchrun for more")
        env.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port())

    dist.init_process_group("gloo")
    train(args, dist.get_rank())
    leave_process_group()
    return 0


def leave_process_group() -> None:
    """Ends the process group once nothing holds it any more.

    DDP's reducer keeps the group alive, and a gloo group still alive when the interpreter
    shuts down can abort a rank at exit ("terminate called without an active exception").
    So the training's objects go first (``train`` has returned; a collection frees their
    reference cycles), then every rank meets at a barrier, then the group goes.
    """
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def train(args: argparse.Namespace, rank: int) -> None:
    args.workdir.mkdir(parents=True, exist_ok=True)
    steps_file = args.workdir / f"steps.rank{rank}.txt"
    checkpoint_file = args.workdir / f"checkpoint.rank{rank}.pt"

    torch.set_num_threads(1)  # the same reduction order in every run
    torchrepro.seed_everything(args.seed)  # identical on every rank
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
    ddp = DistributedDataParallel(model)  # from here on, each rank draws its own streams
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    sampler = DistributedSampler(Points())  # seed derived from the root seed
    loader = DataLoader(sampler.dataset, batch_size=BATCH, sampler=sampler)

    step, first_epoch = 0, 0
    if args.resume:
        checkpoint = torchrepro.load_checkpoint(checkpoint_file)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        torchrepro.load_state_dict(checkpoint["torchrepro"])  # this rank's own state
        step, first_epoch = checkpoint["step"], checkpoint["epoch"]
        kept = steps_file.read_text().splitlines()[:step]
        steps_file.write_text("".join(line + "\n" for line in kept))
    else:
        steps_file.write_text("")

    with steps_file.open("a") as steps:
        for epoch in range(first_epoch, EPOCHS):
            sampler.set_epoch(epoch)  # still the user's job, as with plain PyTorch
            for points, labels in loader:
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(ddp(points), labels)
                loss.backward()
                optimizer.step()
                step += 1
                steps.write(f"step {step} {digest(model)}\n")
                if step == args.stop_at:
                    checkpoint = {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "step": step,
                        "epoch": epoch,
                        "torchrepro": torchrepro.state_dict(),
                    }
                    torchrepro.save_checkpoint(checkpoint_file, checkpoint)
                    return
    if rank == 0:
        print(f"{step} steps, parameters {digest(model)}")


if __name__ == "__main__":
    sys.exit(main())
