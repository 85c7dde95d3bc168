"""The training state (RNG streams, loader positions, seed, rank layout) and checkpoints.

Examples:
    >>> torchrepro.seed_everything(11)
    11
    >>> saved = state_dict()
    >>> first = torch.rand(3)
    >>> load_state_dict(saved)
    >>> torch.equal(torch.rand(3), first)
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from torchrepro import data, distributed, seeding
from torchrepro._files import PathLike
from torchrepro.errors import StateError
from torchrepro.state import _archive, _container
from torchrepro.state._container import SCHEMA_VERSION
from torchrepro.state._zip import CHECKPOINT
from torchrepro.state.rng import RNGState, apply_restore, capture_rng, plan_restore

STATE_FORMAT = "torchrepro.state"

# ---------------------------------------------------------------- torchrepro.state_dict


def state_dict(consumed: Mapping[DataLoader[Any], int] | None = None) -> dict[str, Any]:
    """Everything torchrepro tracks, for the user's checkpoint next to model and optimizer.

    Holds the root seed, every RNG state (registered generators included), the
    position of every tracked DataLoader (see :mod:`torchrepro.data`) and the rank layout
    (this rank, the world size, whether its streams were split), as plain data with a
    schema version and checksum. Under torchrun each rank saves its own.

    Args:
        consumed: For a loop that fetches batches ahead of the step using them: per
            loader, the batches of its current epoch trained on (see
            :func:`torchrepro.data.loader_positions`). The framework callbacks pass it.

    Raises:
        SeedError: No root seed was set (call ``seed_everything`` first).

    Examples:
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
        "loaders": [asdict(position) for position in data.loader_positions(consumed)],
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

    Examples:
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


def saved_rng(state: Mapping[str, Any]) -> RNGState:
    """The RNG states a :func:`state_dict` holds, checked, for a restore at a later moment.

    A framework callback loads the whole state when the checkpoint is read, and puts the
    random streams back again right before training resumes, after what the framework
    draws in between (a sanity check, the model's set-up).

    Raises:
        StateError: The state is damaged or not torchrepro's.

    Examples:
        >>> torchrepro.seed_everything(11)
        11
        >>> saved = state_dict()
        >>> first = torch.rand(3)
        >>> torchrepro.restore_rng(saved_rng(saved))
        >>> torch.equal(torch.rand(3), first)
        True
    """
    opened = _container.open_sealed(state, STATE_FORMAT)
    return RNGState.from_state_dict(opened.get("rng"))  # type: ignore[arg-type]


# ---------------------------------------------------------------- whole checkpoints


def save_checkpoint(path: PathLike, checkpoint: object) -> Path:
    """``torch.save`` written atomically and sealed: a crash mid-save leaves the previous file.

    Put in it what ``torch.load(weights_only=True)`` reads with no allow-list: state dicts
    of models and optimizers, :func:`state_dict`, tensors, numbers, strings, lists, tuples
    and dicts. Anything else is refused here, before a file is written, because no loader
    could read it back safely: numpy arrays (``torch.from_numpy(x)``), numpy scalars
    (``x.item()``), ``np.random.get_state()`` (:func:`state_dict` holds it), an
    :class:`~torchrepro.state.RNGState` (its ``state_dict()``), a
    :class:`~torchrepro.digests.Digest` (``str(digest)``); the message names where.

    The file is what ``torch.save`` writes (``torch.load`` reads it) plus one record that
    holds a digest of every other one, so :func:`load_checkpoint` finds damage anywhere,
    weights included. It is streamed to disk, never held in memory a second time; it keeps
    the permissions of the file it replaces (a new one gets the umask's, as with
    ``torch.save``); a stale temporary file an interrupted save of ``path`` left is removed.

    Returns:
        The path written.

    Raises:
        StateError: ``checkpoint`` holds something safe loading refuses or that cannot be
            pickled; ``path`` is a directory or its directory does not exist. Nothing was
            written.

    Examples:
        >>> save_checkpoint("ckpt.pt", {"model": torch.nn.Linear(4, 2).state_dict(), "step": 10})
        PosixPath('ckpt.pt')
        >>> load_checkpoint("ckpt.pt")["step"]
        10
    """
    return _archive.write_archive(path, checkpoint, CHECKPOINT)


def load_checkpoint(path: PathLike, *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` checked first; never runs code from the file.

    Before anything is unpickled: the path must name a regular file (a directory, FIFO or
    device is refused at once), the file must be a torch zip archive whose directory is
    sound, and every record must match the digest :func:`save_checkpoint` stored, the
    model's and optimizer's tensors included; the error names the damaged part. A file
    without digests (``torch.save``'s, torchrepro 0.1.0's) loads as ``torch.load`` would,
    with a warning that its content could not be checked.

    Args:
        path: A file written by :func:`save_checkpoint`.
        mmap: Map the tensors' storages from the file instead of reading them into memory
            (``torch.load(mmap=True)``): loading takes little memory whatever the size; the
            file is still read once to check it. Do not overwrite the file in place while
            the tensors live (``save_checkpoint`` replaces it, which is safe).

    Raises:
        StateError: The path is missing or not a regular file, the file is not a
            checkpoint, is damaged (the message says which part), or holds objects safe
            loading refuses.

    Examples:
        >>> _ = save_checkpoint("ckpt.pt", {"step": 10, "weights": torch.ones(2)})
        >>> load_checkpoint("ckpt.pt", mmap=True)["weights"]
        tensor([1., 1.])
    """
    checkpoint, sealed = _archive.read_archive(path, CHECKPOINT, mmap=mmap)
    if not sealed:
        warnings.warn(
            f"{path} has no torchrepro integrity record (it was written by torch.save or "
            "torchrepro 0.1.0), so damage to its content cannot be detected. Save it again "
            "with torchrepro.save_checkpoint to add one.",
            UserWarning,
            stacklevel=2,
        )
    return checkpoint
