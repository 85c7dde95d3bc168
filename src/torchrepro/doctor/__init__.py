"""``torchrepro doctor``: measure whether this machine repeats, and what determinism costs here.

`run_doctor` runs every probe op (`torchrepro.doctor.probes`) under each determinism level
(`torchrepro._levels`: defaults, the common recipe, PyTorch strict, torchrepro's mode) in
fresh processes (`torchrepro.doctor._measure`): each op several times in one process
(bitwise alike?), and once more in a second process (the same bits?), timed. It checks
torchrepro's own device paths (`torchrepro.doctor.selftest`, and a 20-step training
recorded twice by `torchrepro check`), and recommends the cheapest level under which every
probe, or every probe a given model uses (``--model``), repeated.

torchrepro's level runs in processes started with the variables torchrepro sets
(``CUBLAS_WORKSPACE_CONFIG``, read by cuBLAS only when it starts); the other levels with
the environment as it is.

Examples:
    >>> report = run_doctor("cpu", quick=True, only=["cumsum"], self_test=False)
    >>> first, second = report.entries[:2]
    >>> (first["level"], first["within"], first["across"]), second["level"]
    (('defaults', True, True), 'recipe')
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from torchrepro import _contract
from torchrepro._levels import LEVELS, Level
from torchrepro.doctor.probes import PROBES, Probe, Unavailable, select_probes
from torchrepro.doctor.report import DoctorReport, Recommendation, recommend
from torchrepro.errors import DoctorError

__all__ = ["PROBES", "DoctorReport", "Probe", "Recommendation", "Unavailable", "run_doctor"]

Progress = Callable[[str], None]


def _device(name: str | None) -> torch.device:
    if name is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise DoctorError(
            f"--device {name!r} is not a device; expected cpu, cuda, cuda:N or mps."
        ) from error
    here = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None
        and torch.backends.mps.is_available(),
    }.get(device.type, False)
    if not here:
        raise DoctorError(
            f"--device {name!r}: this machine has no such device (torch {torch.__version__}, "
            f"CUDA {'available' if torch.cuda.is_available() else 'not available'}); "
            "expected a device this torch can use. Leave --device out to take the default one."
        )
    return device


def _environment(device: torch.device) -> dict[str, Any]:
    from torchrepro.env import environment

    env = environment()
    gpu = env["gpu"]
    if device.type == "cuda" and gpu:
        index = device.index or 0
        shown = f"{gpu['names'][index]} (capability {gpu['capability'][index]})"
    else:
        shown = f"{env['cpu']['model']} ({env['cpu']['count']} cores)"
    return {
        "device": f"{device} {shown}",
        "gpus": "-" if not gpu else f"{gpu['count']} x {', '.join(sorted(set(gpu['names'])))}",
        "driver": (gpu or {}).get("driver") or "-",
        "torch": env["torch"],
        "cuda": env["cuda"] or "-",
        "cudnn": env["cudnn"] or "-",
        "python": env["python"],
        "threads": f"intra-op {env['threads']['intra_op']}, inter-op {env['threads']['inter_op']}",
    }


_VARIABLES = (_contract.CUBLAS, _contract.FLASH_ATTENTION, _contract.HASH_SEED)


def _settings() -> list[tuple[str, Any, Any]]:
    """Every determinism setting: now, and under torchrepro's deterministic mode."""
    from torchrepro.determinism import deterministic, settings

    now = {**settings(), **{v: os.environ.get(v) for v in _VARIABLES}}
    with deterministic():
        theirs = {**settings(), **{v: os.environ.get(v) for v in _VARIABLES}}
    # Hash salting is fixed at interpreter start: `torchrepro run` starts it unsalted.
    theirs["string_hashing_randomized"] = "False (torchrepro run)"
    theirs[_contract.HASH_SEED] = "set per run (torchrepro run)"
    return [(name, now[name], theirs[name]) for name in now]


def _groups(device: torch.device) -> list[tuple[list[Level], dict[str, str]]]:
    """The levels each pair of measuring processes runs, with the variables they start with."""
    from torchrepro.determinism import cublas_needs_workspace_config

    plain = [level for level in LEVELS if not level.cublas_workspace]
    extra = {_contract.FLASH_ATTENTION: os.environ.get(_contract.FLASH_ATTENTION, "1")}
    if device.type == "cuda" and cublas_needs_workspace_config():
        extra[_contract.CUBLAS] = os.environ.get(_contract.CUBLAS, _contract.CUBLAS_VALUE)
    return [(plain, {}), ([level for level in LEVELS if level.cublas_workspace], extra)]


class _Runner:
    """Starts measuring processes against one deadline and keeps what they wrote."""

    def __init__(self, folder: Path, deadline: float, limit: float, progress: Progress) -> None:
        self.folder, self.deadline, self.limit, self.progress = folder, deadline, limit, progress
        self.notes: list[str] = []
        self.count = 0

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, what: str, args: Sequence[str], env: dict[str, str], label: str) -> list[Any]:
        self.count += 1
        out = self.folder / f"{self.count}.jsonl"
        err = self.folder / f"{self.count}.err"
        if self.left() <= 0:
            self.notes.append(f"time limit of {self.limit:g} s reached before {label}")
            return []
        self.progress(f"torchrepro doctor: {label} ...")
        command = [sys.executable, "-m", "torchrepro.doctor._measure", what, "--out", str(out)]
        with open(err, "w", encoding="utf-8") as stderr:
            try:
                done = subprocess.run(
                    [*command, *args],
                    env={**os.environ, **env},
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    timeout=self.left(),
                    check=False,
                )
            except subprocess.TimeoutExpired:
                self.notes.append(
                    f"time limit of {self.limit:g} s reached during {label}: what it had not "
                    "measured is marked '?' (raise it with --time-limit)"
                )
                done = None
        if done is not None and done.returncode != 0:
            tail = err.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
            self.notes.append(
                f"failed: {label} exited with status {done.returncode}: {' | '.join(tail)}"
            )
        if not out.exists():
            return []
        with open(out, encoding="utf-8") as lines:
            return [json.loads(line) for line in lines if line.endswith("\n")]


def _merge(
    first: list[dict[str, Any]],
    second: list[dict[str, Any]],
    probes: Sequence[Probe],
    levels: Sequence[Level],
) -> list[dict[str, Any]]:
    """One entry per probe x level: the timed process's result, with `across` from the second."""
    timed = {(r["probe"], r["level"]): r for r in first}
    digests = {(r["probe"], r["level"]): r.get("digest") for r in second}
    entries = []
    for probe in probes:
        for level in levels:
            key = (probe.name, level.name)
            entry = dict(timed.get(key, {"probe": probe.name, "level": level.name}))
            if entry.get("available") and not entry.get("raised"):
                seen = digests.get(key)
                entry["across"] = None if seen is None else seen == entry["digest"]
            entries.append(entry)
    return entries


def _training_twice(device: torch.device, runner: _Runner) -> dict[str, Any]:
    from torchrepro.check import IDENTICAL, check_command
    from torchrepro.errors import TorchReproError

    name = "training recorded twice"
    if runner.left() <= 0:
        return {"self_test": name, "ok": None, "detail": "not run: time limit reached"}
    runner.progress("torchrepro doctor: self-test, a 20-step training checked twice ...")
    command = [sys.executable, "-m", "torchrepro.doctor._train", "--device", str(device)]
    try:
        report = check_command(
            command, deterministic=True, seed=0, localize=False, timeout=runner.left()
        )
    except TorchReproError as error:
        return {"self_test": name, "ok": False, "detail": str(error)}
    ok = report.verdict == IDENTICAL and report.steps_compared == 20
    detail = (
        f"{report.steps_compared} steps bitwise identical in two processes (torchrepro check "
        "--deterministic)"
        if ok
        else report.render().splitlines()[0]
    )
    return {"self_test": name, "ok": ok, "detail": detail, "verdict": report.verdict}


def run_doctor(
    device: str | None = None,
    *,
    quick: bool = False,
    only: Sequence[str] = (),
    probes: Sequence[str] = (),
    model: str | None = None,
    self_test: bool = True,
    time_limit: float | None = None,
    repeats: int | None = None,
    progress: Progress | None = None,
) -> DoctorReport:
    """Probes this machine: each op under each determinism level, and torchrepro itself.

    Args:
        device: "cpu", "cuda", "cuda:N" or "mps"; None takes CUDA, else MPS, else the CPU.
        quick: smaller shapes and 3 calls per op instead of 5 (under a minute).
        only: names of the probes to run (default: all of them).
        probes: `module:function` specs of probes of your own (a list of `Probe`).
        model: `module:function` returning `(model, batch, loss_fn)`, as for
            ``torchrepro cost``: only the probes of the ops its training step runs are
            run and count for the recommendation, and the cost is that of its step.
        self_test: also check torchrepro's digests, RNG capture and replacements on the
            device, and a 20-step training with ``torchrepro check``.
        time_limit: seconds for everything (default 60 quick, 300 full); what is not done
            by then is reported as not measured.
        repeats: calls per op and level after the first (default 3 quick, 5 full).
        progress: called with a line of text as each phase starts.

    Raises:
        DoctorError: a device that is not here, an unknown probe, a malformed spec or limit.
    """
    started = time.monotonic()
    dev = _device(device)
    selected = select_probes(only, probes)
    if model is not None and ":" not in model:
        raise DoctorError(
            f"--model is 'module:function'; got {model!r}. Pass e.g. 'train:workload', a "
            "function returning (model, batch, loss_fn)."
        )
    limit = (60.0 if quick else 300.0) if time_limit is None else time_limit
    if not (isinstance(limit, (int, float)) and limit > 0):
        raise DoctorError(f"time_limit must be a number of seconds > 0; got {time_limit!r}.")
    calls = (3 if quick else 5) if repeats is None else repeats
    if not (isinstance(calls, int) and calls >= 1):
        raise DoctorError(f"repeats must be an int >= 1; got {repeats!r}.")
    settings = _settings()
    environment = _environment(dev)
    common = [
        "--device",
        str(dev),
        *(f"--probe={spec}" for spec in probes),
        *(f"--only={p.name}" for p in selected),
        *(["--quick"] if quick else []),
    ]
    with tempfile.TemporaryDirectory(prefix="torchrepro-doctor-") as folder:
        runner = _Runner(Path(folder), started + limit, limit, progress or (lambda _: None))
        tests: list[dict[str, Any]] = []
        if self_test:
            tests = runner.run("self-test", common[:2], {}, "self-test on the device")
            tests.append(_training_twice(dev, runner))
        traced = None
        if model is not None:  # first: only the probes of the ops its step runs are run
            found = runner.run(
                "model",
                ["--device", str(dev), f"--model={model}"],
                _groups(dev)[-1][1],
                f"tracing and timing {model}",
            )
            traced = found[0] if found else None
        if traced is not None:
            ops = [(name, dtype) for name, dtype in traced["ops"]]
            selected = [p for p in selected if p.matches(ops)]
            common = [a for a in common if not a.startswith("--only=")]
            common += [f"--only={p.name}" for p in selected]
        entries: list[dict[str, Any]] = []
        for levels, env in _groups(dev) if selected else ():
            names = ",".join(level.name for level in levels)
            args = [*common, f"--levels={names}", f"--repeats={calls}"]
            first = runner.run("probes", args, env, f"probes under {names}")
            again = [*common, f"--levels={names}", "--repeats=0"]
            second = runner.run("probes", again, env, f"probes under {names}, a second process")
            entries += _merge(first, second, selected, levels)
        order = {level.name: i for i, level in enumerate(LEVELS)}
        entries.sort(
            key=lambda e: ([p.name for p in selected].index(e["probe"]), order[e["level"]])
        )
        recommendation = recommend(
            entries,
            [level.name for level in LEVELS],
            None if traced is None else [p.name for p in selected],
            None if traced is None else traced["cost"],
        )
        return DoctorReport(
            device=str(dev),
            quick=quick,
            repeats=calls,
            levels=[level.name for level in LEVELS],
            environment=environment,
            settings=settings,
            entries=entries,
            self_test=tests,
            recommendation=recommendation,
            model=traced,
            notes=runner.notes,
            seconds=time.monotonic() - started,
        )
