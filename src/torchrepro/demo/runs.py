"""The demo's runs: each setup trained twice, every run a fresh process, then ``torchrepro
check`` on setup 3.

A run is ``python -m torchrepro.demo --worker SETUP --epochs E --train N --test M``
(:func:`child_main`): it prints one JSON line per epoch (``{"progress": ...}``) and one at
the end (``{"result": ...}``), which the parent reads as they come.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

from torchrepro.check import CheckReport, check_command
from torchrepro.demo.plot import PNG_NAME, plot
from torchrepro.demo.report import DemoReport, Run, SetupResult
from torchrepro.demo.workload import RUNS, SEED, SETUPS, DemoRunError, Scale, train_once
from torchrepro.launch import BOOTSTRAP_DIR, clean_environment

# Steps torchrepro check compares on setup 3 at the end of the demo.
CHECK_STEPS = 120


def child_main(argv: Sequence[str]) -> int:
    """One run of the demo, in this process: ``python -m torchrepro.demo --worker SETUP ...``."""
    parser = argparse.ArgumentParser(prog="python -m torchrepro.demo")
    parser.add_argument("--worker", required=True, choices=[key for key, _ in SETUPS])
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--train", type=int, required=True)
    parser.add_argument("--test", type=int, required=True)
    args = parser.parse_args(argv)

    def emit(event: dict[str, Any]) -> None:
        print(json.dumps({"progress": event}), flush=True)

    result = train_once(args.worker, Scale(args.epochs, args.train, args.test), emit)
    print(json.dumps({"result": result}), flush=True)
    return 0


def _child_env() -> dict[str, str]:
    """The environment of every run: the parent's, without what could seed it behind the
    demo's back, so that each setup seeds only as it says."""
    env = clean_environment()
    # The children import this torchrepro (the checkout or install the parent runs), and
    # not torchrepro run's start-up hook, which would seed every one of them.
    package_root = str(Path(__file__).resolve().parents[2])
    bootstrap = str(BOOTSTRAP_DIR)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != bootstrap]
    env["PYTHONPATH"] = os.pathsep.join([package_root, *paths])
    return env


def _worker_command(setup: str, scale: Scale, python: str | None = None) -> list[str]:
    return [
        sys.executable if python is None else python, "-m", "torchrepro.demo", "--worker",
        setup, "--epochs", str(scale.epochs), "--train", str(scale.train), "--test",
        str(scale.test),
    ]  # fmt: skip


def check_setup(scale: Scale, max_steps: int | None = CHECK_STEPS) -> CheckReport:
    """``torchrepro check`` on setup 3: two more runs, compared at every optimizer step."""
    return check_command(
        _worker_command("torchrepro", scale), seed=SEED, max_steps=max_steps, env=_child_env()
    )


def repeat_command(scale: Scale, max_steps: int | None = CHECK_STEPS) -> str:
    """The command line that repeats ``check_setup(scale, max_steps)``, for a user to paste.

    Examples:
        >>> options, command = repeat_command(Scale.of(quick=True)).split(" -- ")
        >>> options
        'torchrepro check --seed 11 --max-steps 120'
        >>> command
        'python -m torchrepro.demo --worker torchrepro --epochs 2 --train 512 --test 256'
    """
    steps = [] if max_steps is None else ["--max-steps", str(max_steps)]
    worker = _worker_command("torchrepro", scale, python="python")
    return shlex.join(["torchrepro", "check", "--seed", str(SEED), *steps, "--", *worker])


def _run_child(
    setup: str, label: str, index: int, scale: Scale, progress: TextIO, lock: threading.Lock
) -> Run:
    command = _worker_command(setup, scale)
    result: dict[str, Any] | None = None
    with tempfile.TemporaryFile("w+") as errors:
        with subprocess.Popen(
            command, env=_child_env(), stdout=subprocess.PIPE, stderr=errors, text=True
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:
                message = json.loads(line) if line.startswith("{") else {}
                if "progress" in message:
                    p = message["progress"]
                    with lock:
                        print(
                            f"  {label}, run {index}: epoch {p['epoch']}/{scale.epochs}  "
                            f"accuracy {100 * p['accuracy']:.2f} %  loss {p['loss']:.4f}",
                            file=progress,
                            flush=True,
                        )
                elif "result" in message:
                    result = message["result"]
        code = process.wait()
        errors.seek(0)
        stderr = errors.read()
    if code != 0 or result is None:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise DemoRunError(
            f"run {index} of setup {label!r} failed with exit status {code}; "
            f"command: {' '.join(command)}\n{tail}"
        )
    return Run(
        setup=setup,
        index=index,
        accuracy=tuple(result["accuracy"]),
        loss=tuple(result["loss"]),
        digest=result["digest"],
        streams=tuple(result["streams"]),
        seconds=float(result["seconds"]),
    )


def run_demo(
    scale: Scale,
    out: Path | str = ".",
    *,
    progress: TextIO | None = None,
    parallel: int = 2,
) -> DemoReport:
    """Trains the demo's model under each setup, twice, each run in a fresh process.

    Args:
        scale: epochs and data sizes, e.g. ``Scale.of(quick=True)``.
        out: directory for the accuracy plot, ``torchrepro-demo.png``.
        progress: where per-epoch progress lines go (default: stderr).
        parallel: how many runs train at once.

    Returns:
        A ``DemoReport``; ``print(report.render())`` for the table and verdict.

    Raises:
        DemoRunError: A training process failed.

    Examples:
        >>> import io
        >>> report = run_demo(Scale(epochs=1, train=64, test=32), progress=io.StringIO())
        >>> report.setup("torchrepro").identical, report.setup("recipe").workers_distinct
        (True, False)
        >>> report.png.name, report.check.render().splitlines()[0]
        ('torchrepro-demo.png', 'bitwise identical: 2 runs, 2 steps compared')
    """
    stream = sys.stderr if progress is None else progress
    lock = threading.Lock()
    start = time.perf_counter()
    print(
        f"torchrepro demo: training {len(SETUPS)} setups x {RUNS} runs, {parallel} at a time, "
        f"each a fresh process ({scale.epochs} epochs each)",
        file=stream,
        flush=True,
    )
    # The two runs of a setup train side by side, as two real trainings would.
    jobs = [(key, label, index) for key, label in SETUPS for index in range(1, RUNS + 1)]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [
            pool.submit(_run_child, key, label, index, scale, stream, lock)
            for key, label, index in jobs
        ]
        try:
            runs = [future.result() for future in futures]
        except BaseException:
            # A failed run is reported now, not after the runs still queued have trained.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    setups = tuple(
        SetupResult(key, label, tuple(r for r in runs if r.setup == key)) for key, label in SETUPS
    )
    seconds = time.perf_counter() - start
    path = Path(out) / PNG_NAME
    note = plot(setups, path)
    print(
        f"torchrepro check: setup 3 twice more, compared step by step (at most "
        f"{CHECK_STEPS} steps) ...",
        file=stream,
        flush=True,
    )
    return DemoReport(
        scale=scale,
        setups=setups,
        seconds=seconds,
        png=None if note else path,
        png_note=note,
        check=check_setup(scale),
        check_command=repeat_command(scale),
    )
