"""Every test leaves RNG state, determinism flags, torchrepro's loader seeding and the
environment as it found them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import torchrepro
from torchrepro.records import recording

# torch.use_deterministic_algorithms imports torch._inductor on first use. Import it once
# here, outside any test: an import that fails half-way inside a test (a warning turned
# into an error) leaves torch's op registry half-filled and breaks every later import.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import torch._inductor.config  # noqa: F401

# Scripts run as training commands by the tests; importing them as doctest modules would run them.
collect_ignore = ["scripts"]

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "scripts"
sys.path.insert(0, str(SCRIPTS))  # helper modules that tests and child processes import


@pytest.fixture(autouse=True)
def _restore_global_state() -> Iterator[None]:
    environ = dict(os.environ)
    with torchrepro.isolate_rng():
        yield
    os.environ.clear()
    os.environ.update(environ)
    active = recording.active()
    if active is not None:
        active.close()
    assert active is None, "a test left a recording open"


# What the `torchrepro run` bootstrap does: start recording from the environment, then run
# the user's script unchanged as __main__.
BOOTSTRAP = (
    "import runpy, sys; from torchrepro.records import start_from_env; start_from_env(); "
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


def child_env(**extra: str) -> dict[str, str]:
    """An environment for a child Python that imports this checkout's torchrepro."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT / "src"), env.get("PYTHONPATH", "")])
    )
    dropped = ("TORCHREPRO_SEED", "PYTHONHASHSEED", "TORCHREPRO_BOOTSTRAP", "TORCHREPRO_TAKE_OVER")
    for name in dropped:
        env.pop(name, None)
    env.update(extra)
    return env


PYTHON = sys.executable
# Two real ranks on the CPU (gloo), as the distributed tests launch them.
TORCHRUN = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


@contextlib.contextmanager
def time_bound(seconds: int, what: str) -> Iterator[None]:
    """Raises TimeoutError in the block after ``seconds``: a hang fails a test, not the suite."""

    def timeout(signum: int, frame: object) -> None:
        raise TimeoutError(what)

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
