"""Every test leaves RNG state, determinism flags, torchrepro's loader seeding and the
environment as it found them."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import torchrepro

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "scripts"


@pytest.fixture(autouse=True)
def _restore_global_state() -> Iterator[None]:
    environ = dict(os.environ)
    with torchrepro.isolate_rng():
        yield
    os.environ.clear()
    os.environ.update(environ)


def child_env(**extra: str) -> dict[str, str]:
    """An environment for a child Python that imports this checkout's torchrepro."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT / "src"), env.get("PYTHONPATH", "")])
    )
    for name in ("TORCHREPRO_SEED", "PYTHONHASHSEED", "TORCHREPRO_BOOTSTRAP"):
        env.pop(name, None)
    env.update(extra)
    return env


PYTHON = sys.executable
