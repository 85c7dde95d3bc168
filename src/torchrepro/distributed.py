"""Distributed training (torchrun, DistributedDataParallel): which streams ranks share.

The seeding policy, in the order a training meets it:

1. ``seed_everything(seed)`` seeds every global generator *identically on every rank*,
   exactly as in one process. A model built afterwards has the same initial parameters on
   every rank, as DDP requires, without relying on DDP's broadcast.
2. When the first ``DistributedDataParallel`` is constructed after ``seed_everything``
   (after its own broadcast of rank 0's parameters), every global generator (Python,
   numpy, torch CPU and devices, registered generators) is reseeded from
   ``derive_seed(seed, "rank", rank)``: dropout, noise and main-process augmentation then
   differ between ranks and repeat across runs. Wrapping the model is the moment at which
   the ranks have agreed on everything shared and start doing their own share of the
   work, and a script needs no extra call. Without DDP (manual all-reduce, FSDP), call
   :func:`split_streams` where the model is complete. It splits once per
   ``seed_everything``; a later DDP wrap (a second model) does not reseed again.
3. DataLoader generators and worker seeds are keyed by rank already
   (:mod:`torchrepro.data`); shuffle orders are not: every rank draws the same
   permutation, as ranks seeded alike do, so a framework that shards one loader's
   batches across ranks (accelerate) still gives each sample to one rank.
4. A ``DistributedSampler`` created after ``seed_everything`` with its default ``seed=0``
   gets ``derive_seed(seed, "sampler", n) & (2**63 - 1)`` (``n`` counts the samplers
   created, the same on every rank: the ranks must agree on the permutation). Calling
   ``set_epoch`` each epoch is still the user's job; a loader over such a sampler tracks
   its batch position for resume (:mod:`torchrepro.data`).
5. No seed given: ``TORCHREPRO_SEED`` if set (``torchrepro run`` exports it to every rank),
   else rank 0's drawn seed is broadcast once the process group exists, else
   :class:`~torchrepro.SeedError`: ranks never draw different seeds silently.

No seed is ever ``seed + rank``: seed 1 on rank 1 would equal seed 2 on rank 0.

Replica check: after the first DDP wrap, at optimizer step 0 and every ``N`` steps
(:func:`verify_replicas`, ``TORCHREPRO_REPLICA_EVERY``, default 100), every rank digests
the parameters of its DDP-wrapped modules and the digests are all-gathered; a rank whose
parameter differs from rank 0's is reported by rank and parameter name (a
``RuntimeWarning`` on rank 0, and a ``"replicas"`` field in the run record's entry). A
``DTensor`` parameter is compared only when it is replicated on every mesh dimension; a
sharded one holds a different shard on each rank by design and is skipped.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.utils.data.distributed import DistributedSampler
from torch.utils.hooks import RemovableHandle

from torchrepro import _contract
from torchrepro._derive import derive_seed
from torchrepro._sources import seed_all
from torchrepro.errors import DistributedError, SeedError

__all__ = [
    "broadcast_seed",
    "is_distributed",
    "rank",
    "split_streams",
    "streams_split",
    "verify_replicas",
    "world_size",
]

log = logging.getLogger("torchrepro")

_DEFAULT_EVERY = 100
# DistributedSampler adds the epoch to its seed; 63 bits leave room for that sum.
_SAMPLER_SEED_MASK = 2**63 - 1


def _group_ready() -> bool:
    dist = torch.distributed
    return bool(dist.is_available() and dist.is_initialized())


def rank() -> int:
    """This process's global rank: from an initialised process group, else ``RANK``, else 0.

    Examples:
        >>> rank()
        0
    """
    if _group_ready():
        return int(torch.distributed.get_rank())
    return int(os.environ.get(_contract.RANK, "0"))


def world_size() -> int:
    """The number of ranks: from an initialised process group, else ``WORLD_SIZE``, else 1.

    Examples:
        >>> world_size()
        1
    """
    if _group_ready():
        return int(torch.distributed.get_world_size())
    return int(os.environ.get(_contract.WORLD_SIZE, "1"))


def is_distributed() -> bool:
    """Whether this process is one of several ranks (torchrun's variables or a process group).

    Examples:
        >>> is_distributed()
        False
    """
    return world_size() > 1


def broadcast_seed(draw: Callable[[], int]) -> int:
    """Rank 0's ``draw()``, the same on every rank; for a run started with no seed.

    Args:
        draw: Called on rank 0 only; returns the seed to share.

    Returns:
        Rank 0's seed.

    Raises:
        SeedError: The process group is not initialised yet, so the ranks cannot agree.

    Examples:
        >>> url = "file://" + os.path.abspath("rendezvous")
        >>> torch.distributed.init_process_group("gloo", init_method=url, rank=0, world_size=1)
        >>> broadcast_seed(lambda: 1234)
        1234
        >>> torch.distributed.destroy_process_group()
    """
    if not _group_ready():
        raise SeedError(
            f"no seed on rank {rank()} of {world_size()}: expected seed_everything(seed), "
            "TORCHREPRO_SEED, or an initialised process group to share rank 0's seed; got "
            "none, and drawing a seed per rank would give every rank different streams. "
            "Pass a seed, launch with `torchrepro run -- torchrun ...` (it exports one seed "
            "to every rank), or call seed_everything() after init_process_group()."
        )
    box: list[Any] = [draw() if rank() == 0 else None]
    torch.distributed.broadcast_object_list(box, src=0)
    seed: int = box[0]
    return seed


# ---------------------------------------------------------------- per-rank streams


@dataclass
class _Config:
    root: int
    split: bool = False
    samplers: int = 0


_config: _Config | None = None


def configure(root: int | None) -> None:
    """Called by ``seed_everything``: the shared root seed, streams not split yet.

    Installs the DistributedDataParallel and DistributedSampler hooks on first use.
    """
    global _config
    _config = None if root is None else _Config(root)
    if root is not None:
        _install_hooks()


def config() -> _Config | None:
    """A copy of the current state (for ``isolate_rng``)."""
    return None if _config is None else _Config(_config.root, _config.split, _config.samplers)


def set_config(value: _Config | None) -> None:
    """Puts back a value returned by :func:`config`."""
    global _config
    _config = value


def streams_split() -> bool:
    """Whether this rank's global generators were switched to its own seed.

    Examples:
        >>> streams_split()
        False
    """
    return _config is not None and _config.split


def mark_split(split: bool) -> None:
    """Records whether the streams are split (a restored checkpoint says so)."""
    if _config is not None:
        _config.split = split


def split_streams() -> int:
    """Reseeds every global generator with this rank's own seed, ``derive_seed(seed, "rank", r)``.

    Called for you when the first ``DistributedDataParallel`` is constructed after
    ``seed_everything``; call it yourself without DDP (FSDP, a manual all-reduce) once the
    model is built. Anything the ranks must still agree on afterwards should be drawn from
    ``torchrepro.torch_generator("name")``, which is the same on every rank.

    Returns:
        The seed this rank's streams now derive from.

    Raises:
        SeedError: ``seed_everything`` was not called in this process.

    Examples:
        >>> torchrepro.seed_everything(11)
        11
        >>> model = torch.nn.Linear(4, 2)  # identical on every rank
        >>> seed = torchrepro.split_streams()  # dropout differs per rank from here on
        >>> seed == torchrepro.derive_seed(11, "rank", rank())
        True
    """
    if _config is None:
        raise SeedError(
            "split_streams() needs the root seed; got none in this process. "
            "Call torchrepro.seed_everything(seed) first."
        )
    seed = derive_seed(_config.root, "rank", rank())
    seed_all(seed)
    _config.split = True
    log.info("torchrepro: rank %d switched to its own random streams", rank())
    return seed


# ---------------------------------------------------------------- hooks on torch classes

_original_ddp_init: Callable[..., None] | None = None
_original_sampler_init: Callable[..., None] | None = None


def _ddp_init(self: DistributedDataParallel, *args: Any, **kwargs: Any) -> None:
    assert _original_ddp_init is not None
    _original_ddp_init(self, *args, **kwargs)
    _replicas.watch(self)
    if _config is not None and not _config.split:
        split_streams()


def _sampler_init(self: DistributedSampler[Any], *args: Any, **kwargs: Any) -> None:
    assert _original_sampler_init is not None
    bound = inspect.signature(_original_sampler_init).bind(self, *args, **kwargs)
    _original_sampler_init(self, *args, **kwargs)
    if _config is not None and "seed" not in bound.arguments:
        self.seed = derive_seed(_config.root, "sampler", _config.samplers) & _SAMPLER_SEED_MASK
        _config.samplers += 1


def _keeping_signature(
    original: Callable[..., None], hook: Callable[..., None]
) -> Callable[..., None]:
    # inspect.signature follows __wrapped__: frameworks that read a class's signature to
    # re-create its objects (Lightning does, for samplers and loaders) still see torch's.
    @functools.wraps(original)
    def method(*args: Any, **kwargs: Any) -> None:
        hook(*args, **kwargs)

    return method


def _install_hooks() -> None:
    global _original_ddp_init, _original_sampler_init
    if _original_ddp_init is None:
        _original_ddp_init = DistributedDataParallel.__init__
        DistributedDataParallel.__init__ = _keeping_signature(  # type: ignore[method-assign]
            _original_ddp_init, _ddp_init
        )
    if _original_sampler_init is None:
        _original_sampler_init = DistributedSampler.__init__
        DistributedSampler.__init__ = _keeping_signature(  # type: ignore[method-assign]
            _original_sampler_init, _sampler_init
        )


# ---------------------------------------------------------------- replica check


def _every_from_env() -> int:
    text = os.environ.get(_contract.REPLICA_EVERY, str(_DEFAULT_EVERY))
    try:
        every = int(text, 10)
    except ValueError:
        every = -1
    if every < 0:
        raise DistributedError(
            f"{_contract.REPLICA_EVERY} must be a non-negative integer; got {text!r}. "
            "Set it to N (check every N steps) or 0 (never), or unset it."
        )
    return every


class _Replicas:
    """Digests the DDP-replicated parameters at step 0 and every N steps, across ranks."""

    def __init__(self) -> None:
        self.every: int | None = None  # None: read the environment when first needed
        self.modules: list[weakref.ref[DistributedDataParallel]] = []
        self.steps: weakref.WeakKeyDictionary[torch.optim.Optimizer, int] = (
            weakref.WeakKeyDictionary()
        )
        self.done: weakref.WeakKeyDictionary[
            torch.optim.Optimizer, tuple[int, dict[str, Any] | None]
        ] = weakref.WeakKeyDictionary()
        self.handles: list[RemovableHandle] = []

    def watch(self, module: DistributedDataParallel) -> None:
        self.modules.append(weakref.ref(module))
        if not self.handles:
            # The pre-hook counts steps; the post-hook checks. The recorder's own post-hook
            # may run first and ask for the verdict: it is computed once per step either way.
            self.handles = [
                register_optimizer_step_pre_hook(self._on_pre),
                register_optimizer_step_post_hook(self._on_post),
            ]

    def _on_pre(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        self.steps[optimizer] = self.steps.get(optimizer, -1) + 1

    def _on_post(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        self.verdict(optimizer)

    def _named(self, optimizer: torch.optim.Optimizer) -> list[tuple[str, torch.Tensor]]:
        modules = [ddp for ddp in (ref() for ref in self.modules) if ddp is not None]
        names: dict[int, str] = {}
        for index, ddp in enumerate(modules):
            prefix = f"model{index}." if len(modules) > 1 else ""
            for name, parameter in ddp.module.named_parameters():
                names.setdefault(id(parameter), prefix + name)
        return [
            (names[id(p)], p)
            for group in optimizer.param_groups
            for p in group["params"]
            if id(p) in names and _replicated(p)
        ]

    def verdict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        step = self.steps.get(optimizer)
        if step is None or not _group_ready() or world_size() < 2:
            return None
        cached = self.done.get(optimizer)
        if cached is not None and cached[0] == step:
            return cached[1]
        if self.every is None:
            self.every = _every_from_env()
        result = None
        if self.every and step % self.every == 0:
            named = self._named(optimizer)
            # Every rank holds the same structure under DDP, so all skip or all gather.
            result = self._compare(step, named) if named else None
        self.done[optimizer] = (step, result)
        return result

    def _compare(self, step: int, named: list[tuple[str, torch.Tensor]]) -> dict[str, Any]:
        from torchrepro.digests import _digest_tensors  # only ranks that compare need it

        digests = _digest_tensors([p for _, p in named], None, shards=True).hexdigests()
        gathered: list[Any] = [None] * world_size()
        # Object all-gather: 32 hex characters per parameter, every N steps; it works on
        # gloo and NCCL alike (NCCL needs torch.cuda.set_device, as DDP does).
        torch.distributed.all_gather_object(gathered, digests)
        reference = gathered[0]
        drifting: list[list[Any]] = []
        for other, theirs in enumerate(gathered[1:], start=1):
            if len(theirs) != len(reference):
                drifting.append([other, "(a different set of parameters)"])
                continue
            drifting += [
                [other, named[i][0]] for i, (a, b) in enumerate(zip(reference, theirs)) if a != b
            ]
        if drifting and rank() == 0:
            first_rank, first_name = drifting[0]
            more = f" (+{len(drifting) - 1} more)" if len(drifting) > 1 else ""
            warnings.warn(
                f"torchrepro: replicas differ after optimizer step {step}: rank {first_rank} "
                f"has a different {first_name} than rank 0{more}; expected identical "
                "parameters on every rank under DistributedDataParallel. Something changed "
                "the parameters outside DDP's all-reduce on that rank (an in-place edit, a "
                "rank-dependent branch, a nondeterministic all-reduce).",
                RuntimeWarning,
                stacklevel=2,
            )
        return {"step": step, "checked": len(named), "drifting": drifting}


def _replicated(parameter: torch.Tensor) -> bool:
    """Whether every rank holds the whole parameter: a plain tensor, or a replicated DTensor."""
    placements = getattr(parameter, "placements", None)  # only a DTensor has placements
    if placements is None:
        return True
    return all(placement.is_replicate() for placement in placements)


_replicas = _Replicas()


def verify_replicas(every: int = _DEFAULT_EVERY) -> None:
    """Sets how often the replicated parameters are compared across ranks (0: never).

    The check runs at optimizer step 0 and every ``every`` steps of each optimizer that
    holds parameters of a ``DistributedDataParallel`` module, only while a process group
    is initialised. The default comes from ``TORCHREPRO_REPLICA_EVERY`` (else 100);
    ``torchrepro check`` sets it to 1.

    Raises:
        DistributedError: ``every`` is not a non-negative int.

    Examples:
        >>> verify_replicas(every=10)
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise DistributedError(
            f"every must be a non-negative int; got {every!r}. Pass N to compare the "
            "replicas every N steps, or 0 to switch the check off."
        )
    _replicas.every = every


def replica_verdict(optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """This step's replica check for ``optimizer`` (``None`` when none ran); for the recorder."""
    if not _replicas.modules:
        return None  # no DDP module in this process: nothing to compare, at no cost
    return _replicas.verdict(optimizer)
