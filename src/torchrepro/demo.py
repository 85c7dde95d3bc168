"""``torchrepro demo``: the problem, the starting recipe and torchrepro, side by side.

One small CNN learns to tell six noisy shapes apart from images the demo renders itself
(no download), with random augmentation in ``__getitem__`` (Python ``random``, numpy and
torch each draw) and a 2-worker DataLoader. It is trained under three setups, twice each,
every run in a fresh process as two real trainings would be:

1. ``none``: no seeding at all;
2. ``recipe``: the starting recipe users copy (FIELD.md), ``seed_everything(11)`` plus its
   ``worker_init_fn(worker_id, rank, seed)`` through ``functools.partial``;
3. ``torchrepro``: ``torchrepro.seed_everything(11)``.

Each run reports its held-out accuracy and loss per epoch, a digest of its final
parameters and, per epoch and loader worker, a digest of the worker's first augmentation
draws. The parent prints one table (accuracy, loss, spread, bitwise identity, distinct
worker streams), plots the six accuracy curves and gives a verdict on setup 3.

Every number printed is measured by the run that prints it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, get_worker_info

from torchrepro.check import CheckReport, check
from torchrepro.errors import TorchReproError

SETUPS: tuple[tuple[str, str], ...] = (
    ("none", "1 no seeding"),
    ("recipe", "2 starting recipe"),
    ("torchrepro", "3 torchrepro"),
)
"""(key, label) of each setup, in the order the table shows them."""

PNG_NAME = "torchrepro-demo.png"
# Steps torchrepro check compares on setup 3 at the end of the demo.
CHECK_STEPS = 120
SEED = 11
WORKERS = 2
RUNS = 2
CLASSES = ("disc", "ring", "square", "frame", "triangle", "cross")
SIZE = 20
BATCH = 32

# The data are the same in every run of every setup: they come from these fixed
# generators, never from the global RNGs that the setups seed (or leave unseeded).
_TRAIN_DATA_SEED = 20240601
_TEST_DATA_SEED = 20240602

# Environment variables through which a parent could seed its children behind the
# demo's back; the children start without them, so each setup seeds only as it says.
_LEAKY_ENV = (
    "TORCHREPRO_SEED",
    "PYTHONHASHSEED",
    "TORCHREPRO_BOOTSTRAP",
    "TORCHREPRO_DETERMINISTIC",
)


class DemoRunError(TorchReproError):
    """One of the demo's training processes failed."""


@dataclasses.dataclass(frozen=True)
class Scale:
    """How much the demo trains: per run, ``epochs`` passes over ``train`` images."""

    epochs: int
    train: int
    test: int

    @classmethod
    def of(cls, quick: bool, epochs: int | None = None) -> Scale:
        """The full demo's scale, or ``--quick``'s; ``epochs`` overrides either's."""
        base = cls(2, 512, 256) if quick else cls(8, 3000, 600)
        return base if epochs is None else dataclasses.replace(base, epochs=epochs)


# --- the data -------------------------------------------------------------------------


def render_shapes(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` noisy 20x20 images of the six shapes in ``CLASSES``, and their labels.

    Position, size, rotation, contrast, a background gradient and pixel noise vary per
    image, all drawn from a generator seeded with ``seed`` alone: the same images on
    every call, whatever the global RNGs hold. Small discs and squares, rings and frames
    look alike under the noise, which keeps the task from being solved outright.

    Example:
        >>> images, labels = render_shapes(12, seed=0)
        >>> images.shape, sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
        (torch.Size([12, 1, 20, 20]), True)
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % len(CLASSES)
    labels = labels[torch.randperm(count, generator=g)]

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(count, 1, 1, generator=g)).double()

    cx, cy = uniform(7.0, 13.0), uniform(7.0, 13.0)
    r = uniform(4.0, 7.0)
    theta = uniform(0.0, 2 * math.pi)
    ys, xs = torch.meshgrid(
        torch.arange(SIZE, dtype=torch.float64),
        torch.arange(SIZE, dtype=torch.float64),
        indexing="ij",
    )
    dx, dy = xs - cx, ys - cy
    u = dx * theta.cos() + dy * theta.sin()
    v = -dx * theta.sin() + dy * theta.cos()
    d = (dx**2 + dy**2).sqrt()
    box = torch.maximum(u.abs(), v.abs())
    sides = [
        dx * (theta + k * 2 * math.pi / 3).cos() + dy * (theta + k * 2 * math.pi / 3).sin()
        for k in range(3)
    ]
    # Signed "inside" scores, one per class in CLASSES order (positive inside the shape).
    inside = torch.stack(
        [
            r - d,
            0.3 * r - (d - 0.7 * r).abs(),
            0.75 * r - box,
            torch.minimum(0.75 * r - box, box - 0.4 * r),
            torch.stack([0.55 * r - s for s in sides]).amin(0),
            torch.maximum(
                torch.minimum(0.3 * r - u.abs(), r - v.abs()),
                torch.minimum(0.3 * r - v.abs(), r - u.abs()),
            ),
        ]
    )
    score = inside[labels, torch.arange(count)]
    shape = torch.sigmoid(2.0 * score)
    contrast = uniform(0.8, 1.4)
    slope = uniform(-0.04, 0.04)
    background = slope * (xs - SIZE / 2) + uniform(-0.3, 0.3)
    noise = 0.3 * torch.randn(count, SIZE, SIZE, generator=g, dtype=torch.float64)
    images = contrast * shape + background + noise
    return images.float().unsqueeze(1), labels


Sample = tuple[torch.Tensor, int, int, torch.Tensor]


class AugmentedShapes(Dataset[Sample]):
    """``render_shapes`` images with random augmentation in ``__getitem__``, as users write it.

    Each sample is ``(image, label, worker, draws)``: ``worker`` is the id of the loader
    worker that made it (-1 in the main process) and ``draws`` the augmentation's random
    draws (shift x and y, flip from Python ``random``; gain from numpy; the first noise
    value from torch), from which the demo tells whether workers' streams are distinct.
    """

    def __init__(self, count: int) -> None:
        self.images, self.labels = render_shapes(count, _TRAIN_DATA_SEED)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Sample:
        image = self.images[index]
        shift_x, shift_y = random.randint(-2, 2), random.randint(-2, 2)
        flip = random.random() < 0.5
        gain = float(np.random.uniform(0.7, 1.3))
        noise = 0.2 * torch.randn_like(image)
        image = torch.roll(image, shifts=(shift_y, shift_x), dims=(1, 2))
        if flip:
            image = image.flip(-1)
        image = gain * image + noise
        info = get_worker_info()
        draws = torch.tensor(
            [shift_x, shift_y, float(flip), gain, float(noise[0, 0, 0])], dtype=torch.float64
        )
        return image, int(self.labels[index]), -1 if info is None else info.id, draws


def make_model() -> nn.Module:
    """The small CNN the demo trains (two conv blocks, dropout, a linear head)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(32 * 5 * 5, len(CLASSES)),
    )


# --- the starting recipe, exactly as users copy it (FIELD.md) -------------------------


def recipe_seed_everything(seed: int = 11) -> None:
    """The starting recipe's ``seed_everything``, verbatim."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: E702
    torch.manual_seed(seed)
    torch.cuda.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)  # noqa: E702
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def recipe_worker_init_fn(worker_id: int, rank: int, seed: int) -> None:
    """The starting recipe's ``worker_init_fn``, verbatim (used through functools.partial)."""
    worker_seed = rank + seed
    random.seed(worker_seed)
    np.random.seed(worker_seed)
    torch.manual_seed(worker_seed)  # noqa: E702


# --- one run (a child process) --------------------------------------------------------


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer of ``model``, bit for bit."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def train_once(setup: str, scale: Scale, emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Trains the demo's model once under ``setup``; returns what the run measured.

    Meant to run in a fresh process (``python -m torchrepro.demo --worker SETUP``): the
    setups seed process-wide state, and the point is to compare separate processes.

    Args:
        setup: "none", "recipe" or "torchrepro".
        scale: epochs and data sizes.
        emit: called with ``{"epoch", "accuracy", "loss"}`` after each epoch (progress).

    Returns:
        ``accuracy`` and ``loss`` (held-out, per epoch), ``digest`` (final parameters),
        ``streams`` (per epoch and worker, a digest of the worker's first batch of
        augmentation draws) and ``seconds``.
    """
    start = time.perf_counter()
    # One thread each, so that two runs share two cores without oversubscribing them.
    torch.set_num_threads(1)
    init: Callable[[int], None] | None = None
    if setup == "recipe":
        recipe_seed_everything(SEED)
        init = functools.partial(recipe_worker_init_fn, rank=0, seed=SEED)
    elif setup == "torchrepro":
        from torchrepro.seeding import seed_everything

        seed_everything(SEED)
    elif setup != "none":
        raise DemoRunError(f"setup must be one of none, recipe, torchrepro; got {setup!r}.")

    train = AugmentedShapes(scale.train)
    test_images, test_labels = render_shapes(scale.test, _TEST_DATA_SEED)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    loader = DataLoader(
        train, batch_size=BATCH, shuffle=True, num_workers=WORKERS, worker_init_fn=init
    )
    accuracy: list[float] = []
    loss: list[float] = []
    streams: list[str] = []
    for epoch in range(scale.epochs):
        model.train()
        first: dict[int, torch.Tensor] = {}
        for images, labels, workers, draws in loader:
            # A batch is made by a single worker; its first batch stands for its stream.
            first.setdefault(int(workers[0]), draws)
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        streams += [_digest(first[w].numpy().tobytes()) for w in sorted(first)]
        model.eval()
        with torch.no_grad():
            logits = model(test_images)
        accuracy.append(float((logits.argmax(1) == test_labels).double().mean()))
        loss.append(float(F.cross_entropy(logits, test_labels)))
        emit({"epoch": epoch + 1, "accuracy": accuracy[-1], "loss": loss[-1]})
    return {
        "accuracy": accuracy,
        "loss": loss,
        "digest": parameter_digest(model),
        "streams": streams,
        "seconds": time.perf_counter() - start,
    }


def _child_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m torchrepro.demo")
    parser.add_argument("--worker", required=True, choices=[key for key, _ in SETUPS])
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--train", type=int, required=True)
    parser.add_argument("--test", type=int, required=True)
    args = parser.parse_args(argv)

    def emit(event: dict[str, Any]) -> None:
        print(json.dumps({"progress": event}), flush=True)

    result = train_once(args.worker, Scale(args.epochs, args.train, args.test), emit)
    print(json.dumps({"result": result}), flush=True)
    return 0


# --- the parent: six runs, the table, the plot ----------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
    """What one training process measured.

    Attributes:
        setup: "none", "recipe" or "torchrepro".
        index: 1 or 2.
        accuracy: held-out accuracy after each epoch, in [0, 1].
        loss: held-out cross-entropy after each epoch.
        digest: SHA-256 of the final parameters and buffers.
        streams: per epoch and loader worker, a digest of the worker's first augmentation
            draws of the epoch.
        seconds: wall time of the training, process start-up excluded.
    """

    setup: str
    index: int
    accuracy: tuple[float, ...]
    loss: tuple[float, ...]
    digest: str
    streams: tuple[str, ...]
    seconds: float

    @property
    def distinct_streams(self) -> int:
        """How many of the run's worker x epoch streams differ from all the others."""
        return len(set(self.streams))


@dataclasses.dataclass(frozen=True)
class SetupResult:
    """A setup's two runs, and what comparing them shows."""

    key: str
    label: str
    runs: tuple[Run, ...]

    @property
    def identical(self) -> bool:
        """Whether every run ended with bitwise-identical parameters."""
        return len({run.digest for run in self.runs}) == 1

    @property
    def workers_distinct(self) -> bool:
        """Whether, in every run, every worker x epoch stream differed from the others."""
        return all(run.distinct_streams == len(run.streams) for run in self.runs)

    @property
    def accuracy_spread(self) -> float:
        finals = [run.accuracy[-1] for run in self.runs]
        return max(finals) - min(finals)

    @property
    def widest_accuracy_spread(self) -> tuple[float, int]:
        """The largest accuracy spread after any epoch, and that epoch (1-based)."""
        spreads = [max(accs) - min(accs) for accs in zip(*(run.accuracy for run in self.runs))]
        widest = max(range(len(spreads)), key=spreads.__getitem__)
        return spreads[widest], widest + 1

    @property
    def loss_spread(self) -> float:
        finals = [run.loss[-1] for run in self.runs]
        return max(finals) - min(finals)


@dataclasses.dataclass(frozen=True)
class DemoReport:
    """Everything ``run_demo`` measured.

    Attributes:
        scale: epochs and data sizes of every run.
        setups: one entry per setup, in ``SETUPS`` order.
        seconds: wall time of the whole demo.
        png: the accuracy plot, or None when it was not written.
        png_note: why there is no plot, when there is none.
        check: ``torchrepro check`` on setup 3 (None when it was not run).
    """

    scale: Scale
    setups: tuple[SetupResult, ...]
    seconds: float
    png: Path | None
    png_note: str | None
    check: CheckReport | None = None

    def setup(self, key: str) -> SetupResult:
        """The result of setup ``key`` ("none", "recipe" or "torchrepro")."""
        return next(s for s in self.setups if s.key == key)

    def table(self) -> str:
        """The comparison table: one row per setup, cells separated by ``|``."""
        header = (
            "setup",
            "run 1 acc",
            "run 1 loss",
            "run 2 acc",
            "run 2 loss",
            "acc spread",
            "loss spread",
            "widest acc spread",
            "bitwise identical",
            "workers distinct",
        )
        rows = [header]
        for s in self.setups:
            one, two = s.runs
            counts = ", ".join(f"{r.distinct_streams}/{len(r.streams)}" for r in s.runs)
            widest = s.widest_accuracy_spread
            rows.append(
                (
                    s.label,
                    f"{100 * one.accuracy[-1]:.2f} %",
                    f"{one.loss[-1]:.4f}",
                    f"{100 * two.accuracy[-1]:.2f} %",
                    f"{two.loss[-1]:.4f}",
                    f"{100 * s.accuracy_spread:.2f} pp",
                    f"{s.loss_spread:.4f}",
                    f"{100 * widest[0]:.2f} pp, epoch {widest[1]}" if widest[0] else "0.00 pp",
                    "yes" if s.identical else "no",
                    f"{'yes' if s.workers_distinct else 'NO'}: {counts}",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = []
        for n, row in enumerate(rows):
            cells = [
                cell.ljust(w) if i in (0, 8, 9) else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths))
            ]
            lines.append("| " + " | ".join(cells) + " |")
            if n == 0:
                lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        return "\n".join(lines)

    def render(self) -> str:
        """The demo's report: what was trained, the table, the plot, the verdict."""
        scale = self.scale
        lines = [
            f"torchrepro demo: one small CNN, {scale.train} generated {SIZE}x{SIZE} images of "
            f"{len(CLASSES)} noisy shapes,",
            "random augmentation in __getitem__ (random, numpy, torch), a "
            f"{WORKERS}-worker DataLoader, {scale.epochs} epochs.",
            f"Each setup trained {RUNS} times, each run a fresh process; accuracy and loss on "
            f"{scale.test} held-out images.",
            "",
            self.table(),
            "",
            "widest acc spread: the largest gap between the two runs' accuracy after any epoch.",
            "workers distinct: per run, how many of its "
            f"{WORKERS} workers x {scale.epochs} epochs drew a first batch of augmentation "
            "unlike all the others.",
            f"{sum(len(s.runs) for s in self.setups)} runs in {self.seconds:.0f} s.",
        ]
        lines.append(f"accuracy curves: {self.png}" if self.png else f"no plot: {self.png_note}")
        lines += ["", verdict(self)]
        return "\n".join(lines)


def verdict(report: DemoReport) -> str:
    """The verdict on the torchrepro setup that ends the demo: ``torchrepro check``'s.

    The demo compares the final parameters of setup 3's two runs itself; ``torchrepro
    check`` then runs setup 3 twice more, side by side, and compares every optimizer step.
    """
    s = report.setup("torchrepro")
    digests = ", ".join(sorted({run.digest[:16] for run in s.runs}))
    same = "bitwise-identical" if s.identical else "DIFFERENT"
    lines = [f"setup 3's two runs ended with {same} final parameters (sha256 {digests})"]
    if report.check is None:
        lines.append("torchrepro check was not run")
    else:
        command = "torchrepro check -- python -m torchrepro.demo --worker torchrepro"
        lines += [f"$ {command}", report.check.render()]
    return "\n".join(lines)


def check_setup(scale: Scale, max_steps: int | None = CHECK_STEPS) -> CheckReport:
    """``torchrepro check`` on setup 3: two more runs, compared at every optimizer step."""
    return check(
        _worker_command("torchrepro", scale), seed=11, max_steps=max_steps, env=_child_env()
    )


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY_ENV}
    # The children import this torchrepro (the checkout or install the parent runs), and
    # not torchrepro run's start-up hook, which would seed every one of them.
    package_root = str(Path(__file__).resolve().parents[1])
    bootstrap = str(Path(__file__).resolve().parent / "_bootstrap")
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != bootstrap]
    env["PYTHONPATH"] = os.pathsep.join([package_root, *paths])
    return env


def _worker_command(setup: str, scale: Scale) -> list[str]:
    return [
        sys.executable, "-m", "torchrepro.demo", "--worker", setup, "--epochs",
        str(scale.epochs), "--train", str(scale.train), "--test", str(scale.test),
    ]  # fmt: skip


def _run_child(
    setup: str, label: str, index: int, scale: Scale, progress: TextIO, lock: threading.Lock
) -> Run:
    command = _worker_command(setup, scale)
    result: dict[str, Any] | None = None
    with tempfile.TemporaryFile("w+") as errors:
        with subprocess.Popen(
            command, env=_child_env(), stdout=subprocess.PIPE, stderr=errors, text=True
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:
                message = json.loads(line) if line.startswith("{") else {}
                if "progress" in message:
                    p = message["progress"]
                    with lock:
                        print(
                            f"  {label}, run {index}: epoch {p['epoch']}/{scale.epochs}  "
                            f"accuracy {100 * p['accuracy']:.2f} %  loss {p['loss']:.4f}",
                            file=progress,
                            flush=True,
                        )
                elif "result" in message:
                    result = message["result"]
        code = process.wait()
        errors.seek(0)
        stderr = errors.read()
    if code != 0 or result is None:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise DemoRunError(
            f"run {index} of setup {label!r} failed with exit status {code}; "
            f"command: {' '.join(command)}\n{tail}"
        )
    return Run(
        setup=setup,
        index=index,
        accuracy=tuple(result["accuracy"]),
        loss=tuple(result["loss"]),
        digest=result["digest"],
        streams=tuple(result["streams"]),
        seconds=float(result["seconds"]),
    )


_STYLES = {"none": "tab:red", "recipe": "tab:orange", "torchrepro": "tab:blue"}


def plot(report_setups: Sequence[SetupResult], path: Path) -> str | None:
    """Writes the accuracy curves of every run to ``path`` (PNG); returns why not, or None.

    matplotlib is optional (``pip install 'torchrepro[plot]'``); without it nothing is
    written and the reason is returned.
    """
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed; pip install 'torchrepro[plot]' for the PNG"
    matplotlib.use("Agg")  # no display needed, and none is touched
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    # One panel per setup: two runs that repeat draw one curve, two that do not draw two.
    figure, panels = plt.subplots(
        1, len(report_setups), figsize=(4 * len(report_setups), 3.8), sharey=True, squeeze=False
    )
    for axes, s in zip(panels[0], report_setups):
        for run in s.runs:
            axes.plot(
                range(1, len(run.accuracy) + 1),
                [100 * a for a in run.accuracy],
                color=_STYLES.get(s.key, "black"),
                linestyle="-" if run.index == 1 else "--",
                marker="o" if run.index == 1 else "x",
                label=f"run {run.index}",
            )
        axes.set_title(
            f"{s.label}\nbitwise identical: {'yes' if s.identical else 'no'}; "
            f"workers distinct: {'yes' if s.workers_distinct else 'NO'}",
            fontsize=10,
        )
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, loc="lower right")
    panels[0][0].set_ylabel("held-out accuracy (%)")
    figure.suptitle("torchrepro demo: each setup trained twice, in fresh processes")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    plt.close(figure)
    return None


def run_demo(
    scale: Scale,
    out: Path | str = ".",
    *,
    progress: TextIO | None = None,
    parallel: int = 2,
) -> DemoReport:
    """Trains the demo's model under each setup, twice, each run in a fresh process.

    Args:
        scale: epochs and data sizes, e.g. ``Scale.of(quick=True)``.
        out: directory for the accuracy plot, ``torchrepro-demo.png``.
        progress: where per-epoch progress lines go (default: stderr).
        parallel: how many runs train at once.

    Returns:
        A ``DemoReport``; ``print(report.render())`` for the table and verdict.

    Raises:
        DemoRunError: A training process failed.

    Example:
        >>> report = run_demo(Scale.of(quick=True), out="/tmp")
        >>> report.setup("torchrepro").identical
        True
    """
    stream = sys.stderr if progress is None else progress
    lock = threading.Lock()
    start = time.perf_counter()
    print(
        f"torchrepro demo: training {len(SETUPS)} setups x {RUNS} runs, {parallel} at a time, "
        f"each a fresh process ({scale.epochs} epochs each)",
        file=stream,
        flush=True,
    )
    # The two runs of a setup train side by side, as two real trainings would.
    jobs = [(key, label, index) for key, label in SETUPS for index in range(1, RUNS + 1)]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [
            pool.submit(_run_child, key, label, index, scale, stream, lock)
            for key, label, index in jobs
        ]
        try:
            runs = [future.result() for future in futures]
        except BaseException:
            # A failed run is reported now, not after the runs still queued have trained.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    setups = tuple(
        SetupResult(key, label, tuple(r for r in runs if r.setup == key)) for key, label in SETUPS
    )
    seconds = time.perf_counter() - start
    path = Path(out) / PNG_NAME
    note = plot(setups, path)
    print(
        f"torchrepro check: setup 3 twice more, compared step by step (at most "
        f"{CHECK_STEPS} steps) ...",
        file=stream,
        flush=True,
    )
    return DemoReport(
        scale=scale,
        setups=setups,
        seconds=seconds,
        png=None if note else path,
        png_note=note,
        check=check_setup(scale),
    )


if __name__ == "__main__":
    # Run as `python -m torchrepro.demo --worker ...`: import the module under its own
    # name, so that the dataset class a spawned loader worker unpickles is
    # torchrepro.demo.AugmentedShapes, not __main__'s copy.
    from torchrepro.demo import _child_main as _main

    raise SystemExit(_main(sys.argv[1:]))
