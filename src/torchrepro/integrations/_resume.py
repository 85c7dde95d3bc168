"""What the framework callbacks share: which seed to follow, and every rank's state."""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from torchrepro import _contract, data, distributed, seeding, state
from torchrepro._derive import SeedLike, normalize_seed, parse_seed_text
from torchrepro.errors import CheckError, SeedError, StateError

log = logging.getLogger("torchrepro")

KEY = "torchrepro"
"""The key of torchrepro's part of a framework checkpoint."""


def follow(seed: SeedLike | None, framework_seed: int | None, how: str) -> int:
    """Makes torchrepro follow a seed, leaving the generators as the framework seeded them.

    The seed is ``seed`` if given, else the one torchrepro already has (``seed_everything``,
    ``torchrepro run``), else ``framework_seed``, else ``TORCHREPRO_SEED``.

    Raises:
        SeedError: None of them is set; ``how`` says how the framework sets one.
    """
    if seed is not None:
        root = normalize_seed(seed)
    elif seeding.seeded_root() is not None:
        root = seeding.root_seed()
    elif framework_seed is not None:
        root = framework_seed
    elif os.environ.get(_contract.SEED) is not None:
        root = seeding.root_seed()
    else:
        raise SeedError(
            "torchrepro's callback found no seed to follow: expected the framework to be "
            f"seeded ({how}), or torchrepro (torchrepro.seed_everything, torchrepro run); got "
            "neither. Seed it, or pass the callback seed=<int>."
        )
    configured = data.loader_config()
    if configured is None or configured.root != root or seeding.seeded_root() != root:
        seeding.adopt_seed(root)
    return root


def seed_from_env(name: str) -> int | None:
    """A seed a framework exported in ``name`` (``PL_GLOBAL_SEED``), if any."""
    text = os.environ.get(name)
    return None if not text else parse_seed_text(text, name)


def every_rank(consumed: Mapping[DataLoader[Any], int]) -> dict[str, Any]:
    """Every rank's :func:`torchrepro.state_dict`, for a checkpoint that one rank writes.

    A collective among several ranks: call it on every rank, as the frameworks call their
    save hooks. The states are plain data; they travel between this run's own processes.
    """
    own = state.state_dict(consumed)
    if not distributed.is_distributed() or not torch.distributed.is_initialized():
        return {"ranks": [own]}
    ranks: list[Any] = [None] * distributed.world_size()
    torch.distributed.all_gather_object(ranks, own)
    return {"ranks": ranks}


def own_rank(saved: object) -> dict[str, Any]:
    """This rank's state out of :func:`every_rank`'s value, as read from a checkpoint.

    Raises:
        StateError: ``saved`` is not such a value, or holds another number of ranks.
    """
    ranks = saved.get("ranks") if isinstance(saved, Mapping) else None
    if not isinstance(ranks, list) or not all(isinstance(item, Mapping) for item in ranks):
        raise StateError(
            f"the checkpoint's {KEY!r} entry: expected {{'ranks': [state, ...]}} as torchrepro's "
            f"callback writes it; got {type(saved).__name__}. The checkpoint was changed or not "
            "written by torchrepro."
        )
    here, world = distributed.rank(), distributed.world_size()
    if len(ranks) != world:
        raise StateError(
            f"the checkpoint holds the state of {len(ranks)} rank(s); this run has {world}. "
            f"Resume with {len(ranks)} process(es), as the run was saved."
        )
    return dict(ranks[here])


def say_missing(where: str) -> None:
    """Logs that a checkpoint being resumed holds no torchrepro state."""
    log.warning(
        "torchrepro: %s holds no torchrepro state (it was saved without the callback): the "
        "random streams and loader positions are not restored, so this resume is not exact.",
        where,
    )


def say_untracked(loaders: list[DataLoader[Any]]) -> None:
    """Logs once per loader that torchrepro cannot position it."""
    for loader in loaders:
        if "_torchrepro_track" not in loader.__dict__ and not loader.__dict__.get(
            "_torchrepro_said"
        ):
            loader.__dict__["_torchrepro_said"] = True
            log.warning(
                "torchrepro: the training loader over %s has a sampler, batch sampler or "
                "generator of its own (or an IterableDataset), so torchrepro cannot save its "
                "position: a resume inside an epoch restarts that epoch's data.",
                type(loader.dataset).__name__,
            )


@dataclass(frozen=True)
class CheckRequest:
    """What ``torchrepro check --resume-at K`` asks of this run (see :mod:`torchrepro.check`).

    Attributes:
        folder: The run's own checkpoint folder (``TORCHREPRO_CHECKPOINT_DIR``).
        stop_at: Stop after this step, through the framework, with a checkpoint.
        resume: Resume from the checkpoint the stopped run left in ``folder``.
    """

    folder: Path
    stop_at: int | None
    resume: bool


def check_request() -> CheckRequest | None:
    """The request of ``check --resume-at`` from the environment; ``None`` outside check.

    Raises:
        CheckError: ``TORCHREPRO_STOP_AT`` is not a positive int.
    """
    folder = os.environ.get(_contract.CHECKPOINT_DIR)
    if not folder:
        return None
    text = os.environ.get(_contract.STOP_AT)
    if text is not None and not (text.isascii() and text.isdigit() and int(text) > 0):
        raise CheckError(
            f"{_contract.STOP_AT} must be a positive int (a step count); got {text!r}. It is "
            "set by torchrepro check --resume-at K; unset it to train normally."
        )
    stop_at = None if text is None else int(text)
    return CheckRequest(Path(folder), stop_at, os.environ.get(_contract.RESUME) == "1")


_intercepted: set[tuple[type, str]] = set()


def intercept(owner: type, method: str, name: str, change: Callable[[Any, Any], Any]) -> None:
    """Passes argument ``name`` of every ``owner.method`` call through ``change(self, value)``.

    How a callback learns (and, for ``check --resume-at``, supplies) the framework's resume
    argument: ``Trainer.train(resume_from_checkpoint=...)``, ``Trainer.fit(ckpt_path=...)``.
    Installed once per method; ``change`` returns ``value`` unchanged for an object with
    no torchrepro callback.
    """
    if (owner, method) in _intercepted:
        return
    _intercepted.add((owner, method))
    original = getattr(owner, method)
    signature = inspect.signature(original)

    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        before = bound.arguments.get(name)
        after = change(self, before)
        if after is not before:
            bound.arguments[name] = after
            log.info("torchrepro: check --resume-at: %s(%s=%r)", method, name, after)
        return original(*bound.args, **bound.kwargs)

    setattr(owner, method, wrapper)
