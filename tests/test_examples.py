"""Every script in examples/ runs as it is, and does what its docstring says."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import PYTHON, ROOT, child_env

EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def run_example(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, str(path), *args], env=child_env(), capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_each_example_runs_as_it_is(path: Path) -> None:
    result = run_example(path)
    assert result.returncode == 0, result.stderr


def test_the_training_example_ends_with_the_same_parameters_every_run() -> None:
    first, second = (run_example(ROOT / "examples" / "train.py") for _ in range(2))
    assert first.returncode == 0, first.stderr
    last = first.stdout.strip().splitlines()[-1]
    assert last.startswith("seed 11: final parameters ")
    assert second.stdout == first.stdout
