"""Doctests of the package: every docstring example runs, in a fresh temporary folder, with
the names an example may take for granted, and leaves global state as it found it."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import torchrepro

# Run by Python at interpreter start-up; importing it here would run the bootstrap.
collect_ignore = ["torchrepro/_bootstrap"]


@pytest.fixture(autouse=True)
def _doctest_sandbox(
    doctest_namespace: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[None]:
    # ``item`` is the running doctest itself: the pytest plugin's examples take it.
    doctest_namespace.update(
        torch=torch, np=np, torchrepro=torchrepro, os=os, sys=sys, Path=Path, item=request.node
    )
    monkeypatch.chdir(tmp_path)
    environ = dict(os.environ)
    with torchrepro.isolate_rng():
        yield
    os.environ.clear()
    os.environ.update(environ)
