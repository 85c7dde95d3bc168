"""The training state (RNG streams, loader positions, seed, rank layout) and checkpoints.

Example:
    >>> torchrepro.seed_everything(11)
    11
    >>> saved = state_dict()
    >>> first = torch.rand(3)
    >>> load_state_dict(saved)
    >>> torch.equal(torch.rand(3), first)
    True
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from torchrepro import data, distributed, seeding
from torchrepro._files import PathLike, atomic_write_bytes
from torchrepro.errors import StateError
from torchrepro.state import _container
from torchrepro.state._container import SCHEMA_VERSION
from torchrepro.state.rng import RNGState, apply_restore, capture_rng, plan_restore

STATE_FORMAT = "torchrepro.state"

# ---------------------------------------------------------------- torchrepro.state_dict


def state_dict() -> dict[str, Any]:
    """Everything torchrepro tracks, for the user's checkpoint next to model and optimizer.

    Holds the root seed, every RNG state (registered generators included), the
    position of every tracked DataLoader (see :mod:`torchrepro.data`) and the rank layout
    (this rank, the world size, whether its streams were split), as plain data with a
    schema version and checksum. Under torchrun each rank saves its own.

    Raises:
        SeedError: No root seed was set (call ``seed_everything`` first).

    Example:
        >>> torchrepro.seed_everything(11)
        11
        >>> sorted(state_dict())
        ['checksum', 'distributed', 'format', 'loaders', 'rng', 'seed', 'version']
    """
    body = {
        "format": STATE_FORMAT,
        "version": SCHEMA_VERSION,
        "seed": seeding.root_seed(),
        "rng": capture_rng().state_dict(),
        "loaders": [asdict(position) for position in data.loader_positions()],
        "distributed": {
            "rank": distributed.rank(),
            "world_size": distributed.world_size(),
            "streams_split": int(distributed.streams_split()),
        },
    }
    return _container.seal(body)


def _layout(value: object) -> tuple[int, int, bool]:
    """(rank, world size, streams split) of a saved state; states before torchrun: (0, 1, no)."""
    if value is None:
        return 0, 1, False
    keys = ["rank", "streams_split", "world_size"]
    if (
        not isinstance(value, Mapping)
        or sorted(value) != keys
        or not all(isinstance(value[key], int) and value[key] >= 0 for key in keys)
        or value["rank"] >= value["world_size"]
        or value["streams_split"] > 1
    ):
        raise StateError(
            f"{STATE_FORMAT} state: expected 'distributed' to hold non-negative ints {keys} "
            f"with rank < world_size; got {value!r}. The state was not written by torchrepro."
        )
    return int(value["rank"]), int(value["world_size"]), bool(value["streams_split"])


def _check_layout(saved_rank: int, saved_world: int) -> None:
    here_rank, here_world = distributed.rank(), distributed.world_size()
    if saved_world != here_world:
        raise StateError(
            f"the checkpoint holds rank {saved_rank}'s state of a {saved_world}-process run; "
            f"this process is rank {here_rank} of {here_world}. Per-rank random streams and "
            "data positions belong to the world size they were saved under, so the training "
            f"would not continue as saved. Relaunch with --nproc-per-node {saved_world}, or "
            "pass reshard=True to load it anyway (see README, 'Distributed training')."
        )
    if saved_rank != here_rank:
        raise StateError(
            f"the checkpoint holds rank {saved_rank}'s state; this process is rank "
            f"{here_rank}. Loading one rank's state on another gives both the same random "
            "streams. Save torchrepro.state_dict() on every rank (e.g. to "
            f"ckpt.rank{{rank}}.pt) and load each rank's own file, or pass reshard=True."
        )


_POSITION_FIELDS = [field.name for field in fields(data.LoaderPosition)]


def _positions(value: object) -> list[data.LoaderPosition]:
    if not isinstance(value, list):
        raise StateError(f"{STATE_FORMAT} state: expected 'loaders' to be a list; got {value!r}.")
    positions = []
    for item in value:
        if (
            not isinstance(item, Mapping)
            or sorted(item) != sorted(_POSITION_FIELDS)
            or not all(isinstance(item[key], int) and item[key] >= 0 for key in item)
        ):
            raise StateError(
                f"{STATE_FORMAT} state: expected each loader position to have non-negative "
                f"ints {_POSITION_FIELDS}; got {item!r}. The state was not written by torchrepro."
            )
        positions.append(data.LoaderPosition(**{key: int(item[key]) for key in item}))
    return positions


def load_state_dict(
    state: Mapping[str, Any], *, skip: Collection[str] = (), reshard: bool = False
) -> None:
    """Puts back what :func:`state_dict` saved: RNG states and loader positions.

    Call it after ``seed_everything`` (same seed) and after creating the loaders, before
    iterating them: each tracked loader's next ``iter()`` then starts at its saved epoch
    and batch, without loading the skipped batches. Everything is checked before anything
    is applied. Under torchrun each rank loads the state it saved; whether its streams
    were split is restored too, so a DDP wrap after the load does not reseed them.

    Args:
        state: The value :func:`state_dict` returned, as loaded from a checkpoint.
        skip: RNG source names to leave alone (see :func:`restore_rng`).
        reshard: Accept a state saved under another world size or by another rank. The
            RNG states are restored as saved and each loader restarts its saved epoch at
            batch 0 (a batch position does not map onto another split of the data). The
            training goes on, but no longer as the saved run would have.

    Raises:
        StateError: The state is damaged, of another version, saved under another seed,
            by another rank or world size (without ``reshard``), or does not fit this
            process's generators or loaders; nothing was changed.

    Example:
        >>> torchrepro.seed_everything(11)
        11
        >>> saved = state_dict()
        >>> first = torch.rand(3)
        >>> load_state_dict(saved)
        >>> torch.equal(torch.rand(3), first)
        True
    """
    opened = _container.open_sealed(state, STATE_FORMAT)
    saved_seed = opened.get("seed")
    current = seeding.root_seed()
    if saved_seed != current:
        raise StateError(
            f"the checkpoint was taken under seed {saved_seed!r}; this process was seeded with "
            f"{current}. Call torchrepro.seed_everything({saved_seed!r}) before creating the "
            "loaders, then load the state."
        )
    rng = RNGState.from_state_dict(opened.get("rng"))  # type: ignore[arg-type]
    positions = _positions(opened.get("loaders"))
    saved_rank, saved_world, split = _layout(opened.get("distributed"))
    if reshard:
        positions = [replace(position, batch=0) for position in positions]
    else:
        _check_layout(saved_rank, saved_world)
    plan = plan_restore(rng, skip)
    data.check_positions(positions)
    apply_restore(plan)
    data.apply_positions(positions)
    distributed.mark_split(split)


# ---------------------------------------------------------------- whole checkpoints


def save_checkpoint(path: PathLike, checkpoint: object) -> Path:
    """``torch.save`` written atomically: a crash mid-save leaves the previous file intact.

    Put only what ``weights_only=True`` loading accepts in it (state dicts of models and
    optimizers, :func:`state_dict`, tensors, numbers, strings, lists, dicts).

    Returns:
        The path written.

    Example:
        >>> save_checkpoint("ckpt.pt", {"model": torch.nn.Linear(4, 2).state_dict(), "step": 10})
        PosixPath('ckpt.pt')
        >>> load_checkpoint("ckpt.pt")["step"]
        10
    """
    return atomic_write_bytes(path, _container.serialize(checkpoint))


def load_checkpoint(path: PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` with clear errors; never runs code from the file.

    Raises:
        StateError: The file holds a pickle of arbitrary objects, or is truncated or damaged.

    Example:
        >>> _ = save_checkpoint("ckpt.pt", {"step": 10, "weights": torch.ones(2)})
        >>> checkpoint = load_checkpoint("ckpt.pt")
    """
    return _container.load_plain(path)
