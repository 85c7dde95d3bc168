"""Exact resume inside the real frameworks, through their own checkpoints and resume.

Each script in tests/scripts/frameworks/*_resume.py is a training as its framework's users
write it, with random augmentation in the dataset and dropout in the model; torchrepro's
callback is its only torchrepro line (``CALLBACK=1``). An uninterrupted run saves a
checkpoint mid-epoch and one at an epoch boundary, each resumed in a new process with the
framework's own resume argument; the final parameters are compared bit for bit. Without
the callback the same test shows the framework alone does not resume exactly (if a release
fixes that, the test is skipped and says so).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import torchrepro
from conftest import PYTHON, SCRIPTS, child_env
from torchrepro.check import check_command
from torchrepro.errors import SeedError, StateError
from torchrepro.integrations import _resume

FRAMEWORKS = SCRIPTS / "frameworks"
ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@dataclass(frozen=True)
class Framework:
    name: str
    package: str
    script: str
    checkpoints: dict[str, str]  # resume point -> checkpoint path under OUT
    env: tuple[tuple[str, str], ...] = ()
    at_once: bool = True  # run both resumes at once (not with ranks: each would pick a port)


LIGHTNING = Framework(
    "Lightning",
    "pytorch_lightning",
    "lightning_resume.py",
    {"mid-epoch": "step10/step=10.ckpt", "epoch-boundary": "step14/step=14.ckpt"},
)

LIGHTNING_DDP = Framework(
    "Lightning DDP",
    "pytorch_lightning",
    "lightning_resume.py",
    {"mid-epoch": "step5/step=5.ckpt", "epoch-boundary": "step7/step=7.ckpt"},
    env=(("DEVICES", "2"),),  # strategy="ddp" on 2 CPU processes; Lightning starts rank 1
    at_once=False,
)
HF_TRAINER = Framework(
    "HF Trainer",
    "transformers",
    "hf_resume.py",
    {"mid-epoch": "checkpoint-5", "epoch-boundary": "checkpoint-10"},
)
ACCELERATE = Framework(
    "accelerate",
    "accelerate",
    "accelerate_resume.py",
    {"mid-epoch": "step10", "epoch-boundary": "step14"},
)
ALL = [
    pytest.param(LIGHTNING, id="lightning"),
    pytest.param(HF_TRAINER, id="hf-trainer"),
    pytest.param(ACCELERATE, id="accelerate"),
]


def needs_framework(framework: Framework) -> None:
    # Probed without importing: the framework runs in the child processes only.
    if importlib.util.find_spec(framework.package) is None:
        pytest.skip(f"{framework.package} is not installed (extra 'frameworks')")


def start(framework: Framework, out: Path, **env: str) -> subprocess.Popen[str]:
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [PYTHON, str(FRAMEWORKS / framework.script)],
        env=child_env(OUT=str(out), **ENV, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> str:
    try:
        output, _ = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()  # closes its pipes
        raise
    assert process.returncode == 0, output[-3000:]
    return output


Outcome = tuple[dict[str, bool], dict[str, str]]


def resumed_runs(
    framework: Framework, out: Path, *, callbacks: tuple[bool, ...], workers: int, **env: str
) -> dict[bool, Outcome]:
    """With and/or without the callback: per resume point, whether the resumed run ends with
    the uninterrupted run's parameters, and what it printed.

    The uninterrupted runs go two at a time, then each setting's two resumes. Each run has
    a folder of its own (a resumed run goes on saving checkpoints, which must not replace
    the ones another resume reads).
    """
    needs_framework(framework)

    def env_of(callback: bool) -> dict[str, str]:
        base = {**dict(framework.env), "CALLBACK": str(int(callback)), "WORKERS": str(workers)}
        return {**base, **env}

    folders = {callback: out / ("with" if callback else "without") for callback in callbacks}
    wholes = [start(framework, folders[c] / "whole", **env_of(c)) for c in callbacks]
    for process in wholes:
        finish(process)
    outcomes = {}
    for callback, folder in folders.items():
        printed, running = {}, {}
        for point, path in framework.checkpoints.items():
            resume = str(folder / "whole" / path)
            running[point] = start(framework, folder / point, RESUME=resume, **env_of(callback))
            if not framework.at_once:
                printed[point] = finish(running.pop(point))
        printed.update({point: finish(process) for point, process in running.items()})
        whole = torch.load(folder / "whole" / "final.pt", weights_only=True)
        equal = {}
        for point in framework.checkpoints:
            resumed = torch.load(folder / point / "final.pt", weights_only=True)
            equal[point] = all(torch.equal(whole[key], resumed[key]) for key in whole)
        outcomes[callback] = (equal, printed)
    return outcomes


_both: dict[tuple[str, int], dict[bool, Outcome]] = {}


def with_and_without(
    framework: Framework, workers: int, tmp_path_factory: pytest.TempPathFactory
) -> dict[bool, Outcome]:
    """:func:`resumed_runs` with and without the callback, run once for both tests."""
    key = (framework.name, workers)
    if key not in _both:
        out = tmp_path_factory.mktemp("resume")
        _both[key] = resumed_runs(framework, out, callbacks=(True, False), workers=workers)
    return _both[key]


@pytest.mark.parametrize("framework", ALL)
@pytest.mark.parametrize("workers", [0, 2])
def test_the_callback_resumes_the_framework_exactly_mid_epoch_and_at_an_epoch_boundary(
    tmp_path_factory: pytest.TempPathFactory, framework: Framework, workers: int
) -> None:
    equal, printed = with_and_without(framework, workers, tmp_path_factory)[True]
    assert equal == dict.fromkeys(framework.checkpoints, True)
    assert not any("holds no torchrepro state" in output for output in printed.values())


def test_the_lightning_callback_resumes_ddp_exactly_rank_by_rank(tmp_path: Path) -> None:
    outcome = resumed_runs(LIGHTNING_DDP, tmp_path, callbacks=(True,), workers=2)
    assert outcome[True][0] == dict.fromkeys(LIGHTNING_DDP.checkpoints, True)


@pytest.mark.parametrize("framework", ALL)
@pytest.mark.parametrize("workers", [0, 2])
def test_without_the_callback_the_framework_alone_does_not_resume_exactly(
    tmp_path_factory: pytest.TempPathFactory, framework: Framework, workers: int
) -> None:
    equal, _ = with_and_without(framework, workers, tmp_path_factory)[False]
    version = importlib.metadata.version(framework.package)
    if all(equal.values()):  # a release fixed it: say so rather than fail
        pytest.skip(
            f"{framework.name} {version} alone now resumes exactly: the callback adds nothing"
        )
    assert not equal["mid-epoch"], f"{framework.name} {version} alone resumed exactly mid-epoch"


def test_with_ignore_data_skip_trainer_resumes_exactly_at_an_epoch_boundary_and_warns_inside_one(
    tmp_path: Path,
) -> None:
    outcome = resumed_runs(HF_TRAINER, tmp_path, callbacks=(True,), workers=2, IGNORE_DATA_SKIP="1")
    equal, printed = outcome[True]
    assert equal == {"mid-epoch": False, "epoch-boundary": True}
    assert "ignore_data_skip=True: Trainer restarts the epoch" in printed["mid-epoch"]
    assert "ignore_data_skip" not in printed["epoch-boundary"]


def test_a_callback_with_no_seed_to_follow_says_how_to_give_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TORCHREPRO_SEED", raising=False)
    monkeypatch.setattr(torchrepro.seeding, "_root", None)
    with pytest.raises(SeedError, match=r"pl.seed_everything\(seed\).*seed=<int>"):
        _resume.follow(None, None, "pl.seed_everything(seed)")


def test_a_callback_follows_the_framework_seed_and_leaves_the_generators_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torchrepro.seeding, "_root", None)
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    assert _resume.follow(None, 42, "") == 42
    assert torchrepro.seeding.root_seed() == 42
    assert torch.equal(torch.rand(2), expected)


def test_a_checkpoint_entry_of_another_shape_or_rank_count_is_refused() -> None:
    torchrepro.seed_everything(11)
    with pytest.raises(StateError, match="expected {'ranks'"):
        _resume.own_rank({"rank": []})
    with pytest.raises(StateError, match="holds the state of 2 rank"):
        _resume.own_rank({"ranks": [{}, {}]})
    saved = _resume.every_rank({})
    assert _resume.own_rank(saved) == saved["ranks"][0]


RESUMED_BY_CHECK = [
    pytest.param(LIGHTNING, 10, 28, id="lightning"),
    pytest.param(HF_TRAINER, 5, 30, id="hf-trainer"),
]


def check_env(out: Path, **env: str) -> dict[str, str]:
    return {"PYTHONPATH": child_env()["PYTHONPATH"], "OUT": str(out), **ENV, **env}


@pytest.mark.parametrize("framework, resume_at, steps", RESUMED_BY_CHECK)
def test_check_resume_at_stops_and_resumes_through_the_framework_with_the_callback(
    tmp_path: Path, framework: Framework, resume_at: int, steps: int
) -> None:
    needs_framework(framework)
    command = [PYTHON, str(FRAMEWORKS / framework.script)]
    env = check_env(tmp_path, CALLBACK="1", WORKERS="2")
    report = check_command(command, env=env, resume_at=resume_at, timeout=300)
    assert report.verdict == "identical", report.render()
    assert report.steps_compared == steps
    assert f"stopped after step {resume_at} and resumed" in report.render()


def test_check_resume_at_says_a_framework_script_without_the_callback_does_not_resume(
    tmp_path: Path,
) -> None:
    needs_framework(LIGHTNING)
    command = [PYTHON, str(FRAMEWORKS / LIGHTNING.script)]
    report = check_command(command, env=check_env(tmp_path, WORKERS="0"), resume_at=3, timeout=300)
    assert report.verdict == "failed", report.render()
    assert "asked to stop after step 3 but went on to step" in report.message
    assert "add torchrepro's callback" in report.message
