"""A pytest plugin (``-p doctest_sandbox`` in pyproject.toml) for the package's doctests:
every docstring example runs in a fresh temporary folder, with the names an example may
take for granted, and leaves global state as it found it.

A plugin rather than ``src/conftest.py``: two conftest modules would both be imported as
``conftest``, and the tests import theirs by that name.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from _pytest.doctest import DoctestItem

import torchrepro
from torchrepro import _sources

# The framework each integration module imports (the frameworks extra may be missing).
_NEEDS = {
    "lightning.py": "pytorch_lightning",
    "transformers.py": "transformers",
    "accelerate.py": "accelerate",
}


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    # Run by Python at interpreter start-up; importing it would run the bootstrap.
    if collection_path.name == "_bootstrap":
        return True
    framework = _NEEDS.get(collection_path.name)
    if collection_path.parent.name == "integrations" and framework is not None:
        return True if importlib.util.find_spec(framework) is None else None
    return None


@pytest.fixture(autouse=True)
def _doctest_sandbox(request: pytest.FixtureRequest) -> Iterator[None]:
    if not isinstance(request.node, DoctestItem):
        yield
        return
    namespace = request.getfixturevalue("doctest_namespace")
    # ``item`` is the running doctest itself: the pytest plugin's examples take it.
    namespace.update(
        torch=torch, np=np, torchrepro=torchrepro, os=os, sys=sys, Path=Path, item=request.node
    )
    request.getfixturevalue("monkeypatch").chdir(request.getfixturevalue("tmp_path"))
    with global_state_kept():
        yield


@contextlib.contextmanager
def global_state_kept() -> Iterator[None]:
    """Runs an example, then puts back what it may change: RNG states, determinism flags and
    loader seeding (``isolate_rng``), the environment and the registered generators."""
    environ = dict(os.environ)
    registered = dict(_sources._registered)  # an example may register a generator
    try:
        with torchrepro.isolate_rng():
            yield
    finally:
        os.environ.clear()
        os.environ.update(environ)
        _sources._registered.clear()
        _sources._registered.update(registered)
