from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import torchrepro.record  # noqa: F401  (loads the module for the fixture)

SCRIPTS = Path(__file__).parent / "scripts"

# What the `torchrepro run` bootstrap does: start recording from the environment, then run
# the user's script unchanged as __main__.
BOOTSTRAP = (
    "import runpy, sys; from torchrepro.record import start_from_env; start_from_env(); "
    "script = sys.argv[1]; sys.argv = sys.argv[1:]; runpy.run_path(script, run_name='__main__')"
)


def start_recorded(record: Path, script: str = "train_cnn.py", **env: str) -> subprocess.Popen[str]:
    """Start a training script in a fresh interpreter under the recorder."""
    full = dict(os.environ, TORCHREPRO_RECORD=str(record), **env)
    return subprocess.Popen(
        [sys.executable, "-c", BOOTSTRAP, str(SCRIPTS / script)],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_recorded(
    record: Path, script: str = "train_cnn.py", **env: str
) -> subprocess.CompletedProcess[str]:
    """Run a training script in a fresh interpreter under the recorder."""
    return finish(start_recorded(record, script, **env))


@pytest.fixture(autouse=True)
def _no_recording_leaks() -> Iterator[None]:
    """Every test leaves no active recorder and no TORCHREPRO_ variables behind."""
    # torchrepro.record is also the name of the function, so go through sys.modules.
    rec = sys.modules["torchrepro.record"]
    saved = {k: v for k, v in os.environ.items() if k.startswith("TORCHREPRO_")}
    yield
    active = rec._active
    if active is not None:
        active.close()
    for k in [k for k in os.environ if k.startswith("TORCHREPRO_")]:
        del os.environ[k]
    os.environ.update(saved)
    assert active is None, "a test left a recording open"
