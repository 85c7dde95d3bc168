"""What the demo trains: generated shape images, their augmentation, the model, the three
setups' seeding, and one training under a setup.

Everything here runs inside one training process (``python -m torchrepro.demo --worker
SETUP``); ``runs`` starts those processes, ``report`` compares what they measured.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, get_worker_info

from torchrepro.errors import RunError

SETUPS: tuple[tuple[str, str], ...] = (
    ("none", "1 no seeding"),
    ("recipe", "2 starting recipe"),
    ("torchrepro", "3 torchrepro"),
)
"""(key, label) of each setup, in the order the table shows them."""

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


class DemoRunError(RunError):
    """One of the demo's training processes failed (exit status 3)."""


@dataclasses.dataclass(frozen=True)
class Scale:
    """How much the demo trains: per run, ``epochs`` passes over ``train`` images."""

    epochs: int
    train: int
    test: int

    @classmethod
    def of(cls, quick: bool, epochs: int | None = None) -> Scale:
        """The full demo's scale, or ``--quick``'s; ``epochs`` overrides either's.

        Examples:
            >>> Scale.of(quick=True)
            Scale(epochs=2, train=512, test=256)
            >>> Scale.of(quick=False, epochs=3)
            Scale(epochs=3, train=3000, test=600)
        """
        base = cls(2, 512, 256) if quick else cls(8, 3000, 600)
        return base if epochs is None else dataclasses.replace(base, epochs=epochs)


# --- the data -------------------------------------------------------------------------


def render_shapes(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` noisy 20x20 images of the six shapes in ``CLASSES``, and their labels.

    Position, size, rotation, contrast, a background gradient and pixel noise vary per
    image, all drawn from a generator seeded with ``seed`` alone: the same images on
    every call, whatever the global RNGs hold. Small discs and squares, rings and frames
    look alike under the noise, which keeps the task from being solved outright.

    Examples:
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

    Examples:
        >>> image, label, worker, draws = AugmentedShapes(6)[0]
        >>> image.shape, worker, draws.shape
        (torch.Size([1, 20, 20]), -1, torch.Size([5]))
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
    """The small CNN the demo trains (two conv blocks, dropout, a linear head).

    Examples:
        >>> make_model()(torch.zeros(4, 1, SIZE, SIZE)).shape
        torch.Size([4, 6])
    """
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


# --- the starting recipe, exactly as users copy it ---------------------------------


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
    """The starting recipe's ``worker_init_fn``, verbatim (used through functools.partial).

    ``worker_id`` is unused, so every worker gets the same seed, and the same draws:

    Examples:
        >>> recipe_worker_init_fn(0, rank=0, seed=11)
        >>> first = random.random()
        >>> recipe_worker_init_fn(1, rank=0, seed=11)
        >>> random.random() == first
        True
    """
    worker_seed = rank + seed
    random.seed(worker_seed)
    np.random.seed(worker_seed)
    torch.manual_seed(worker_seed)  # noqa: E702


# --- one run (a child process) --------------------------------------------------------


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer of ``model``, bit for bit.

    Examples:
        >>> model = make_model()
        >>> digest = parameter_digest(model)
        >>> len(digest), digest == parameter_digest(model)
        (64, True)
    """
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
