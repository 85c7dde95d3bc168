"""Probes planted for `torchrepro doctor --probe doctor_probes:probes`: one that repeats, one
whose noise is fixed per process (from os.urandom at import: alike within a process, not
across two), one with fresh noise in every call, and one that strict mode refuses."""

from __future__ import annotations

import os

import torch

from torchrepro.doctor import Probe

_PER_PROCESS = int.from_bytes(os.urandom(4), "little") / 2**32


def _same(device: torch.device, quick: bool) -> object:
    x = torch.linspace(-1, 1, 1000, device=device)
    return lambda: [torch.sin(x) * 3]


def _per_process(device: torch.device, quick: bool) -> object:
    x = torch.linspace(-1, 1, 1000, device=device)
    return lambda: [x + _PER_PROCESS]


def _per_call(device: torch.device, quick: bool) -> object:
    x = torch.linspace(-1, 1, 1000, device=device)
    return lambda: [x + int.from_bytes(os.urandom(4), "little") / 2**32]


def _refused_when_strict(device: torch.device, quick: bool) -> object:
    x = torch.linspace(-1, 1, 1000, device=device)

    def step() -> list[torch.Tensor]:
        if torch.are_deterministic_algorithms_enabled():
            raise RuntimeError("planted_op does not have a deterministic implementation")
        return [x * 2]

    return step


def probes() -> list[Probe]:
    return [
        Probe("planted same", ("sin",), _same),  # type: ignore[arg-type]
        Probe("planted per process", ("add",), _per_process),  # type: ignore[arg-type]
        Probe("planted per call", ("add",), _per_call),  # type: ignore[arg-type]
        Probe("planted strict", ("mul",), _refused_when_strict),  # type: ignore[arg-type]
    ]
