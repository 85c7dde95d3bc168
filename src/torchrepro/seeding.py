"""``seed_everything``, derived generators and ``isolate_rng``."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import numpy as np
import torch

from torchrepro import _contract, data, determinism, distributed, takeover
from torchrepro._derive import (
    SeedLike,
    derive_seed,
    fresh_seed,
    hash_seed_for,
    require_bool,
    resolve_root,
    root_seed_from_env,
)
from torchrepro._flags import check_mode
from torchrepro._sources import capture_all, restore_all, seed_all, seed_generator

log = logging.getLogger("torchrepro")

_root: int | None = None
_said: set[str] = set()


def _say_once(key: str, message: str, *args: object) -> None:
    if key not in _said:
        _said.add(key)
        log.warning(message, *args)


def resolve_seed(seed: SeedLike | None) -> int:
    """The root seed for ``seed``: itself, else ``TORCHREPRO_SEED``, else a fresh one (logged).

    Among several ranks a fresh seed is drawn on rank 0 and broadcast; before the process
    group exists that is impossible, and :class:`SeedError` says what to do instead.

    Examples:
        >>> resolve_seed("experiment-1") == resolve_seed("experiment-1")
        True
    """
    if seed is None and os.environ.get(_contract.SEED) is None and distributed.is_distributed():
        return distributed.broadcast_seed(fresh_seed)
    return resolve_root(seed)


_exported_hash_seed: str | None = None


def _export_hash_seed(root: int) -> None:
    """Sets ``PYTHONHASHSEED`` for child processes, unless someone else set it.

    A value set by the user or by ``torchrepro run`` is kept; one this process exported
    for an earlier root is replaced, so children follow the latest ``seed_everything``.
    """
    global _exported_hash_seed
    if os.environ.get(_contract.HASH_SEED) in (None, _exported_hash_seed):
        _exported_hash_seed = str(hash_seed_for(root))
        os.environ[_contract.HASH_SEED] = _exported_hash_seed


def seed_everything(
    seed: SeedLike | None = None,
    *,
    deterministic: bool | str | None = None,
    workers: bool = True,
    take_over: bool | None = None,
) -> int:
    """Seeds every random number generator in this process and the ones it starts.

    Python ``random``, numpy's global RNG, torch on the CPU and every device, and each
    generator registered with :func:`torchrepro.register_generator`, get their own seed
    derived from ``seed``. ``TORCHREPRO_SEED`` and ``PYTHONHASHSEED`` are
    exported for child processes (spawned workers, torchrun ranks, subprocesses).

    Under torchrun every rank is seeded identically (a model built next is the same on
    every rank); the first ``DistributedDataParallel`` wrap then gives each rank its own
    streams for dropout and augmentation (:mod:`torchrepro.distributed`).

    Args:
        seed: An int in [0, 2**64) or a str (hashed stably). ``None`` reuses
            ``TORCHREPRO_SEED`` if set, else draws a fresh seed and logs it once (among
            several ranks: rank 0's, broadcast through the initialised process group).
        deterministic: ``None`` sets cuDNN deterministic on and benchmark off (the common
            recipe); ``True`` also turns on deterministic algorithms and the other
            switches of :func:`torchrepro.enable_determinism`; ``"warn"`` the same in
            warn-only mode; ``False`` touches no flag.
        workers: Seed the shuffle order and the workers of every DataLoader created
            afterwards (see :mod:`torchrepro.data`).
        take_over: What a later ``torch.manual_seed(n)``, ``np.random.seed(n)``,
            ``random.seed(n)`` (or ``transformers.set_seed``, Lightning's
            ``seed_everything``) of the script does. ``False``: it seeds as it always does,
            and torchrepro names its file and line once in a log warning. ``True``: it
            then seeds from ``derive_seed(seed, "take-over", stream, n)`` instead, so
            the script's own seeding follows ``seed`` (see :mod:`torchrepro.takeover`).
            ``None``: ``TORCHREPRO_TAKE_OVER`` (``1`` on; set by ``--take-over``), else off.

    Returns:
        The root seed used, an int.

    Raises:
        SeedError: ``seed`` is not an int in [0, 2**64) or a str; or no seed is given
            among several ranks before the process group is initialised; or
            ``TORCHREPRO_TAKE_OVER`` is not 1 or 0.
        DeterminismError: ``deterministic`` is not one of the values above.

    Examples:
        >>> seed_everything(11)
        11
        >>> def draws(seed):
        ...     seed_everything(seed, take_over=True)
        ...     torch.manual_seed(1111)       # the script's own seeding...
        ...     return torch.rand(2)
        >>> torch.equal(draws(11), draws(12)), torch.equal(draws(11), draws(11))  # ...follows seed
        (False, True)
    """
    mode = None if deterministic is None else check_mode(deterministic)
    require_bool(workers, "workers")
    taking_over = (
        takeover.take_over_from_env() if take_over is None else require_bool(take_over, "take_over")
    )
    root = _set_root(resolve_seed(seed))
    seed_all(root)
    if mode is None:
        determinism.set_recipe_flags()
    elif mode is not False:
        determinism.enable_determinism(mode)
    _configure(root, workers=workers, take_over=taking_over)
    log.info(
        "torchrepro: seeded everything with %d on rank %d of %d (deterministic=%s)",
        root,
        distributed.rank(),
        distributed.world_size(),
        deterministic,
    )
    return root


def _set_root(root: int) -> int:
    global _root
    _root = root
    os.environ[_contract.SEED] = str(root)
    _export_hash_seed(root)
    if determinism.string_hashing_randomized():
        _say_once(
            "hash",
            "torchrepro: str hashing is salted in this interpreter (PYTHONHASHSEED was not "
            "set when it started), so set and dict-of-str order changes per run. Child "
            "processes are fixed; for this one, launch with `torchrepro run -- python ...`.",
        )
    return root


def _configure(root: int, *, workers: bool, take_over: bool) -> None:
    data.configure_loaders(root if workers else None)
    distributed.configure(root)
    takeover.install(root, take_over)


def adopt_seed(seed: SeedLike) -> int:
    """Everything ``seed_everything(seed)`` sets up but the seeding: for a framework callback.

    The framework (``pl.seed_everything``, ``transformers.set_seed``) seeded the generators
    and built the model with them; they are left as they are. Loaders created from now on
    are seeded and tracked from ``seed``, ``TORCHREPRO_SEED`` is exported, DDP ranks get
    their own streams at the wrap, and later reseeds are reported (take-over off).

    Returns:
        The root seed, an int.

    Raises:
        SeedError: ``seed`` is not an int in [0, 2**64) or a str.

    Examples:
        >>> _ = torch.manual_seed(5)
        >>> first = torch.rand(2)
        >>> _ = torch.manual_seed(5)
        >>> adopt_seed(42), root_seed(), torch.equal(torch.rand(2), first)
        (42, 42, True)
    """
    root = _set_root(resolve_seed(seed))
    _configure(root, workers=True, take_over=False)
    log.info("torchrepro: following seed %d on rank %d", root, distributed.rank())
    return root


def seeded_root() -> int | None:
    """The last ``seed_everything``'s (or ``adopt_seed``'s) root seed in this process, if any.

    Examples:
        >>> seed_everything(11)
        11
        >>> seeded_root()
        11
    """
    return _root


def root_seed() -> int:
    """The root seed of this process: the last ``seed_everything``'s, else ``TORCHREPRO_SEED``.

    Raises:
        SeedError: No seed was set in either way.

    Examples:
        >>> seed_everything(11)
        11
        >>> root_seed()
        11
    """
    return _root if _root is not None else root_seed_from_env()


def numpy_generator(*keys: SeedLike) -> np.random.Generator:
    """A numpy ``Generator`` of its own, derived from the root seed and ``keys``.

    Examples:
        >>> seed_everything(11)
        11
        >>> int(numpy_generator("augment").integers(1000))
        420
    """
    return np.random.default_rng(derive_seed(root_seed(), "numpy", *keys))


def torch_generator(*keys: SeedLike, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch ``Generator`` of its own on ``device``, derived from the root seed and ``keys``.

    Examples:
        >>> seed_everything(11)
        11
        >>> a = torch.randn(3, generator=torch_generator("noise"))
        >>> torch.equal(a, torch.randn(3, generator=torch_generator("noise")))
        True
    """
    return seed_generator(torch.Generator(device=device), derive_seed(root_seed(), "torch", *keys))


@contextlib.contextmanager
def isolate_rng() -> Iterator[None]:
    """Everything random drawn inside the block is forgotten after it, even on error.

    Restores Python, numpy, torch CPU, device and registered generators' RNG states, the
    determinism flags, the environment variables torchrepro manages and its DataLoader
    seeding and whether the script's own seeding is taken over. Blocks nest.

    Examples:
        >>> before = torch.get_rng_state()
        >>> with isolate_rng():
        ...     _ = torch.randn(5)     # an evaluation pass, say: the training never notices
        >>> torch.equal(before, torch.get_rng_state())
        True
    """
    flags = determinism.snapshot()
    try:
        with isolate_seeding():
            yield
    finally:
        determinism.restore(flags)


@contextlib.contextmanager
def isolate_seeding(*, rng: bool = True) -> Iterator[None]:
    """As :func:`isolate_rng`, but the determinism flags and environment variables stay as
    the block leaves them: only RNG states (with `rng`) and torchrepro's seeding are restored.

    The pytest plugin runs each test in it, without `rng` (every test is seeded anew): a
    fixture's own choice of flags is the suite's.

    Examples:
        >>> with isolate_seeding():
        ...     torch.backends.cudnn.benchmark = True
        >>> torch.backends.cudnn.benchmark
        True
        >>> torch.backends.cudnn.benchmark = False
    """
    global _root
    states = capture_all() if rng else {}
    loaders = data.loader_config()
    ranks = distributed.config()
    taken = takeover.config()
    root = _root
    try:
        yield
    finally:
        restore_all(states)
        data.set_loader_config(loaders)
        distributed.set_config(ranks)
        takeover.set_config(taken)
        _root = root
