"""The table of random number sources: one entry per generator torchrepro seeds and saves.

Seeding, isolation, capture and restore all walk this one table, so adding a backend
is adding one entry. Device entries are probed when used, never at import, so that
importing torchrepro does not initialise CUDA.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from torchrepro._derive import derive_seed


@dataclass(frozen=True)
class RNGSource:
    """One random number generator torchrepro controls.

    Attributes:
        name: Stable name, used in saved states and messages.
        seed_key: Key under which the source's seed is derived from the root seed.
            Sources sharing a key get the same derived seed (torch's devices share one,
            as ``torch.manual_seed`` does).
        available: Whether the source exists in this process.
        seed: Seeds the source with a 64-bit integer.
        get_state: Returns the source's state.
        set_state: Puts back a state returned by ``get_state``.
    """

    name: str
    seed_key: str
    available: Callable[[], bool]
    seed: Callable[[int], None]
    get_state: Callable[[], Any]
    set_state: Callable[[Any], None]


def _always() -> bool:
    return True


def _seed_numpy(seed: int) -> None:
    # The legacy seeder takes 32-bit words; passing both halves keeps all 64 bits.
    np.random.seed([seed & 0xFFFFFFFF, seed >> 32])


def _device_module(name: str) -> Any:
    return getattr(torch, name, None)


def _device_available(name: str) -> Callable[[], bool]:
    def available() -> bool:
        module = _device_module(name)
        return bool(module is not None and module.is_available())

    return available


def _seed_torch(seed: int) -> None:
    torch.manual_seed(seed)


def _cuda_state() -> list[torch.Tensor]:
    return list(torch.cuda.get_rng_state_all())


def _set_cuda_state(states: list[torch.Tensor]) -> None:
    torch.cuda.set_rng_state_all(states)


def _single_device_source(name: str) -> RNGSource:
    """A source for a backend with one generator (MPS) or a per-process default (XPU)."""
    return RNGSource(
        name=name,
        seed_key="torch",
        available=_device_available(name),
        seed=lambda seed: _device_module(name).manual_seed(seed),
        get_state=lambda: _device_module(name).get_rng_state(),
        set_state=lambda state: _device_module(name).set_rng_state(state),
    )


SOURCES: tuple[RNGSource, ...] = (
    RNGSource("python", "python", _always, random.seed, random.getstate, random.setstate),
    RNGSource("numpy", "numpy", _always, _seed_numpy, np.random.get_state, np.random.set_state),
    RNGSource("torch", "torch", _always, _seed_torch, torch.get_rng_state, torch.set_rng_state),
    RNGSource(
        "cuda",
        "torch",
        _device_available("cuda"),
        torch.cuda.manual_seed_all,
        _cuda_state,
        _set_cuda_state,
    ),
    _single_device_source("mps"),
    _single_device_source("xpu"),
)


def available_sources() -> list[RNGSource]:
    """The sources present in this process, in table order."""
    return [source for source in SOURCES if source.available()]


def capture_all() -> dict[str, Any]:
    """Each available source's state, by name."""
    return {source.name: source.get_state() for source in available_sources()}


def restore_all(states: dict[str, Any]) -> None:
    """Puts back states returned by :func:`capture_all`."""
    by_name = {source.name: source for source in SOURCES}
    for name, state in states.items():
        by_name[name].set_state(state)


def seed_all(root: int) -> dict[str, int]:
    """Seeds every available source with its own seed derived from ``root``.

    numpy, Python and torch get different seeds: seeded with the same integer, numpy's
    and torch's Mersenne Twisters emit the same stream, correlating augmentation with
    dropout.

    Returns:
        The seed given to each source, by name.
    """
    used = {}
    for source in available_sources():
        used[source.name] = derive_seed(root, source.seed_key)
        source.seed(used[source.name])
    return used
