"""Scripts that seed themselves: saying so, and on request deriving their seeds from ours.

After ``seed_everything`` (the bootstrap of ``torchrepro run`` and ``check``, or the
user's own call) a script that calls ``torch.manual_seed``, ``torch.cuda.manual_seed``
(``_all``), ``np.random.seed`` or ``random.seed``, itself or through
``transformers.set_seed`` or Lightning's ``seed_everything``, replaces the streams
torchrepro set: ``--seed`` no longer decides them. Each such call site is named once, in
one log line, with the file and line of the script that made the call (the frames of
torch, numpy, ``random``, transformers, Lightning and accelerate are walked past). The
call itself does what it always does.

With *take-over* (``torchrepro run --take-over``, ``seed_everything(take_over=True)``,
``TORCHREPRO_TAKE_OVER=1``) the same calls run and then seed their generator again with
``derive_seed(root, "take-over", stream, n)``: ``torch.manual_seed(1111)`` follows the
root seed, and two calls with different ``n`` still give different streams.

Without take-over, under ``torchrepro run`` and ``check``, the first such call also stops
torchrepro's DataLoader seeding: loaders created after it are as PyTorch makes them, so the
script's own seeding decides their order, as it does when the script runs plain. A script
that calls ``torchrepro.seed_everything`` itself keeps the loader seeding it asked for.

torchrepro's own seeding (derived generators, worker and per-sample seeding, isolation) is
never reported: a call whose nearest caller outside those frameworks is torchrepro, or the
standard library (PyTorch's own worker set-up), is not the script's. Inside a DataLoader
worker nothing is reported (a ``worker_init_fn`` typically reseeds from the worker's base
seed, which follows the root seed); take-over applies there too.
"""

from __future__ import annotations

import functools
import logging
import operator
import os
import random
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import FrameType, ModuleType
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from torchrepro import _contract, data
from torchrepro._derive import SeedLike, derive_seed
from torchrepro._sources import available_sources
from torchrepro.errors import SeedError

log = logging.getLogger("torchrepro")

FRAMEWORKS = frozenset(
    {
        "torch", "numpy", "random", "transformers", "accelerate",
        "lightning", "lightning_fabric", "pytorch_lightning", "lightning_utilities",
    }
)  # fmt: skip
"""Top-level packages walked past to find the script's line (they seed on its behalf)."""


@dataclass(frozen=True)
class _Config:
    root: int
    take_over: bool
    release_loaders: bool = False  # a reseed stops loader seeding (run/check, no take-over)


_config: _Config | None = None
_said: set[tuple[str, ...]] = set()


def take_over_from_env() -> bool:
    """Whether ``TORCHREPRO_TAKE_OVER`` asks for take-over: ``1`` yes; unset, ``""`` or ``0`` no.

    Raises:
        SeedError: Any other value.

    Examples:
        >>> os.environ["TORCHREPRO_TAKE_OVER"] = "1"
        >>> take_over_from_env()
        True
    """
    text = os.environ.get(_contract.TAKE_OVER, "")
    if text not in ("", "0", "1"):
        raise SeedError(
            f"{_contract.TAKE_OVER} must be 1 (take over the script's own seeding) or 0; "
            f"got {text!r}. Set it to 1 or 0, or unset it."
        )
    return text == "1"


def install(root: int, take_over: bool) -> None:
    """Called by ``seed_everything``: report (or take over) the script's reseeds from now on.

    Patches the seeding functions on first use; each patched function calls the original.
    """
    global _config
    _patch()
    _config = _Config(root, take_over)
    if take_over:
        log.info("torchrepro: take-over on: the script's own seeding derives from seed %d", root)


def release_loaders_on_reseed() -> None:
    """Called by the bootstrap of ``torchrepro run`` and ``check``, after ``seed_everything``.

    The script did not ask for torchrepro's loader seeding, so once it seeds itself (and
    take-over is off) its loaders are left as PyTorch makes them.
    """
    global _config
    if _config is not None:
        _config = replace(_config, release_loaders=True)


def config() -> _Config | None:
    """The current state (for ``isolate_rng``)."""
    return _config


def set_config(value: _Config | None) -> None:
    """Puts back a value returned by :func:`config`."""
    global _config
    _config = value


# ---------------------------------------------------------------- the patched functions


@dataclass(frozen=True)
class _Seeder:
    """One seeding function a script may call, and how take-over seeds in its place."""

    module: ModuleType
    attribute: str
    name: str  # as the user writes it
    stream: str  # the derive_seed key, shared with the table of sources
    what: str
    reseed: Callable[[Callable[..., Any], int], None]


def _reseed_sources(key: str) -> Callable[[Callable[..., Any], int], None]:
    # Through the table of sources: all 64 bits, the way seed_everything seeds.
    def reseed(original: Callable[..., Any], seed: int) -> None:
        for source in available_sources():
            if source.seed_key == key:
                source.seed(seed)

    return reseed


def _reseed_with(original: Callable[..., Any], seed: int) -> None:
    original(seed)  # device generators (Philox) take 64 bits; the call keeps its scope


_SEEDERS = (
    _Seeder(torch, "manual_seed", "torch.manual_seed", "torch", "torch", _reseed_sources("torch")),
    _Seeder(
        torch.random, "manual_seed", "torch.manual_seed", "torch", "torch", _reseed_sources("torch")
    ),
    _Seeder(torch.cuda, "manual_seed", "torch.cuda.manual_seed", "torch", "CUDA", _reseed_with),
    _Seeder(
        torch.cuda, "manual_seed_all", "torch.cuda.manual_seed_all", "torch", "CUDA", _reseed_with
    ),
    _Seeder(np.random, "seed", "np.random.seed", "numpy", "numpy", _reseed_sources("numpy")),
    _Seeder(random, "seed", "random.seed", "python", "Python's random", _reseed_sources("python")),
)
_originals: dict[tuple[str, str], Callable[..., Any]] = {}


def _patch() -> None:
    wrapped: dict[int, Callable[..., Any]] = {}  # torch.manual_seed is torch.random.manual_seed
    for seeder in _SEEDERS:
        key = (seeder.module.__name__, seeder.attribute)
        if key in _originals:
            continue
        original = getattr(seeder.module, seeder.attribute)
        _originals[key] = original
        if id(original) not in wrapped:
            wrapped[id(original)] = _wrap(original, seeder)
        setattr(seeder.module, seeder.attribute, wrapped[id(original)])


def _wrap(original: Callable[..., Any], seeder: _Seeder) -> Callable[..., Any]:
    @functools.wraps(original)
    def seeding(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if _config is not None:
            _after(seeder, original, args, kwargs, sys._getframe(1))
        return result

    return seeding


# ---------------------------------------------------------------- whose call it is

_STDLIB = tuple(
    {os.path.normcase(sysconfig.get_paths()[k]) + os.sep for k in ("stdlib", "platstdlib")}
)


# By file, not module name: a doctest's code runs with its module's globals.
_PACKAGE = os.path.normcase(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _in_stdlib(filename: str) -> bool:
    if filename.startswith("<frozen "):
        return True
    name = os.path.normcase(filename)
    return name.startswith(_STDLIB) and "site-packages" not in name and "dist-packages" not in name


def _script_frame(frame: FrameType | None) -> tuple[FrameType, FrameType | None] | None:
    """The script's frame that made a seeding call, and the framework function it went through.

    Walks from ``frame`` (the caller of the seeding function) past the frames of
    :data:`FRAMEWORKS`. ``None`` when the call is not the script's: it came from
    torchrepro, from one of these patched functions (a nested call), or only from the
    standard library (PyTorch seeding a DataLoader worker as it starts).
    """
    through = None
    while frame is not None:
        top = str(frame.f_globals.get("__name__", "")).partition(".")[0]
        if os.path.normcase(frame.f_code.co_filename).startswith(_PACKAGE):
            return None
        if top in FRAMEWORKS:
            through = frame
        elif _in_stdlib(frame.f_code.co_filename):
            return None
        else:
            return frame, through
        frame = frame.f_back
    return None


def _keys(value: object) -> tuple[SeedLike, ...] | None:
    """The derive_seed keys naming a seed value; one key only for an int or a str."""
    try:
        if value is None:
            return ("none", 0)
        if isinstance(value, str):
            return (value,)
        if isinstance(value, bytes | bytearray):
            return ("bytes", value.hex())
        if isinstance(value, float):
            return ("float", value.hex())
        if hasattr(value, "__index__"):
            number = operator.index(value)
            return (number,) if 0 <= number < 2**64 else ("int", str(number))
        words = np.asarray(value).ravel().tolist()  # np.random.seed takes a sequence of ints
    except (TypeError, ValueError, OverflowError):
        return None
    if not all(isinstance(w, int) and 0 <= w < 2**64 for w in words):
        return None
    return ("array", len(words), *words)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _say_once(key: tuple[str, ...], level: int, message: str, *args: object) -> None:
    if key not in _said:
        _said.add(key)
        log.log(level, message, *args)


def _after(
    seeder: _Seeder,
    original: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    caller: FrameType,
) -> None:
    config = _config
    found = _script_frame(caller)
    if config is None or found is None:
        return
    frame, through = found
    site = f"{frame.f_code.co_filename}:{frame.f_lineno}"
    value = args[0] if args else next(iter(kwargs.values()), None)
    call = f"{seeder.name}({_short(value)})"
    in_worker = get_worker_info() is not None
    if config.take_over:
        _take_over(config.root, seeder, original, value, call, site, quiet=in_worker)
    elif not in_worker:
        if config.release_loaders:
            data.configure_loaders(None)  # the script's seeding decides the order, as plain
        if through is None:
            what = f"{call} reseeds {seeder.what} after torchrepro seeded this process"
        else:
            caller_name = f"{through.f_globals['__name__']}.{through.f_code.co_qualname}"
            what = f"{caller_name} reseeds the process after torchrepro seeded it (first {call})"
        message = f"torchrepro: {site}: {what}. {_meaning(config.release_loaders)}"
        _say_once(("reseed", site), logging.WARNING, "%s", message)


def _meaning(released: bool) -> str:
    if os.environ.get(_contract.BOOTSTRAP) == "1":
        advice = "do not follow --seed; pass --take-over to derive them from it."
    else:
        advice = (
            "do not follow the seed given to torchrepro.seed_everything; pass "
            "take_over=True to derive them from it."
        )
    text = f"This script seeds itself: its random streams {advice}"
    if released:
        text += " DataLoaders created from here on are left as PyTorch makes them."
    return text


def _take_over(
    root: int,
    seeder: _Seeder,
    original: Callable[..., Any],
    value: object,
    call: str,
    site: str,
    quiet: bool,
) -> None:
    keys = _keys(value)
    if keys is None:
        if not quiet:
            _say_once(
                ("take-over", site), logging.WARNING,
                "torchrepro: take-over: %s at %s is not taken over (no seed can be derived "
                "from a %s); it seeds as the script asked", call, site, type(value).__name__,
            )  # fmt: skip
        return
    seeder.reseed(original, derive_seed(root, "take-over", seeder.stream, *keys))
    if quiet:
        return
    derivation = ", ".join(repr(key) for key in (root, "take-over", seeder.stream, *keys))
    if ("take-over",) not in _said:
        _said.update({("take-over",), ("take-over", site)})
        log.warning(
            "torchrepro: take-over is active: the script's own seeding derives from seed %d "
            "(first: %s at %s seeds %s with derive_seed(%s))",
            root, call, site, seeder.what, derivation,
        )  # fmt: skip
    _say_once(
        ("take-over", site), logging.INFO,
        "torchrepro: take-over: %s at %s seeds %s with derive_seed(%s)",
        call, site, seeder.what, derivation,
    )  # fmt: skip
