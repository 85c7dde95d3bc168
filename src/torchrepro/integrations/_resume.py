"""What the framework callbacks share: which seed to follow, and every rank's state."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

from torchrepro import _contract, data, distributed, seeding, state
from torchrepro._derive import SeedLike, normalize_seed, parse_seed_text
from torchrepro.errors import SeedError, StateError

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
