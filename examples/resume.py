"""Stop a training anywhere and resume it bit for bit: a small CNN on generated images.

    python examples/resume.py --workdir runs/a                      # 3 epochs, 36 steps
    python examples/resume.py --workdir runs/b --stop-at 17         # checkpoint, exit 0
    python examples/resume.py --workdir runs/b --resume             # steps 18..36
    diff runs/a/steps.txt runs/b/steps.txt                          # identical

Each optimizer step appends ``step <i> <sha256 of all parameters>`` to DIR/steps.txt.
The augmentation draws from Python, numpy and torch inside ``__getitem__``; under
``torchrepro.sample_rng`` it depends only on (seed, epoch, sample), so the digests are
the same for any ``--workers``, and dropout's stream is restored from the checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import torchrepro

EPOCHS = 3
SAMPLES = 96
BATCH = 8
CLASSES = 4


class Shapes(Dataset[tuple[torch.Tensor, int]]):
    """Generated 16x16 images with random flips, noise and shifts drawn per sample."""

    def __init__(self) -> None:
        generator = torchrepro.torch_generator("images")
        self.labels = torch.randint(CLASSES, (SAMPLES,), generator=generator)
        base = torch.rand(CLASSES, 1, 16, 16, generator=generator)
        self.images = base[self.labels] + 0.1 * torch.rand(SAMPLES, 1, 16, 16, generator=generator)

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with torchrepro.sample_rng(index):
            image = self.images[index]
            if random.random() < 0.5:
                image = image.flip(-1)
            image = image + torch.from_numpy(np.random.normal(0, 0.05, image.shape)).float()
            shift = int(torch.randint(-2, 3, ()).item())
            return image.roll(shift, dims=-2), int(self.labels[index])


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.2),  # draws from the global torch RNG: restored from the checkpoint
        nn.Linear(16 * 8 * 8, CLASSES),
    )


def digest(model: nn.Module) -> str:
    hasher = hashlib.sha256()
    for parameter in model.parameters():
        hasher.update(parameter.detach().cpu().contiguous().numpy().tobytes())
    return hasher.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # The defaults come from `torchrepro check --resume-at K`, which runs this script with
    # no arguments: it stops one run after step K and resumes it in a new process.
    env = os.environ
    parser.add_argument("--workdir", type=Path, default=env.get("TORCHREPRO_CHECKPOINT_DIR"))
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument(
        "--stop-at", type=int, default=env.get("TORCHREPRO_STOP_AT"),
        help="checkpoint after step K, exit",
    )  # fmt: skip
    parser.add_argument(
        "--resume", action="store_true", default=env.get("TORCHREPRO_RESUME") == "1",
        help="continue from DIR's checkpoint",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--crash-after", type=int, default=None, help="checkpoint after this step, then SIGKILL"
    )
    args = parser.parse_args(argv)
    if args.workdir is None:
        args.workdir = Path(tempfile.mkdtemp(prefix="torchrepro-resume-"))
        print(f"no --workdir given; writing to {args.workdir}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    steps_file = args.workdir / "steps.txt"
    checkpoint_file = args.workdir / "checkpoint.pt"

    torch.set_num_threads(1)  # the same reduction order in every run of the check
    torchrepro.seed_everything(args.seed)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(
        Shapes(), batch_size=BATCH, shuffle=True, num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )  # fmt: skip

    step, first_epoch = 0, 0
    if args.resume:
        checkpoint = torchrepro.load_checkpoint(checkpoint_file)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        torchrepro.load_state_dict(checkpoint["torchrepro"])  # after the loader, before iter()
        step, first_epoch = checkpoint["step"], checkpoint["epoch"]
        # A crash may have left lines after the checkpoint; the resumed run rewrites them.
        kept = steps_file.read_text().splitlines()[:step]
        steps_file.write_text("".join(line + "\n" for line in kept))
    else:
        steps_file.write_text("")

    with steps_file.open("a") as steps:
        for epoch in range(first_epoch, EPOCHS):
            for images, labels in loader:
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(images), labels)
                loss.backward()
                optimizer.step()
                step += 1
                steps.write(f"step {step} {digest(model)}\n")
                steps.flush()
                if step in (args.stop_at, args.crash_after):
                    checkpoint = {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "step": step,
                        "epoch": epoch,
                        "torchrepro": torchrepro.state_dict(),
                    }
                    torchrepro.save_checkpoint(checkpoint_file, checkpoint)
                    if step == args.crash_after:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
