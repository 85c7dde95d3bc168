from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy
import pytest
import torch

from conftest import PYTHON, child_env
from torchrepro.cli import main
from torchrepro.env import environment, flatten, format_environment


def test_manifest_names_versions_threads_and_flags() -> None:
    env = environment()
    assert env["torch"] == torch.__version__ and env["numpy"] == numpy.__version__
    assert env["threads"]["intra_op"] == torch.get_num_threads()
    assert env["determinism"]["deterministic_algorithms"] == (
        torch.are_deterministic_algorithms_enabled()
    )
    assert env["world_size"] >= 1
    json.dumps(env)  # records embed it as JSON


def test_manifest_follows_flags_and_relevant_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    monkeypatch.setenv("TORCHREPRO_SEED", "11")
    monkeypatch.setenv("UNRELATED_VARIABLE", "x")
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    env = environment()
    assert env["env_vars"]["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert "UNRELATED_VARIABLE" not in env["env_vars"]
    assert env["seed"] == 11
    assert env["determinism"]["cudnn_benchmark"] is True


def test_manifest_does_not_initialise_cuda() -> None:
    # A fresh interpreter: this one may have started CUDA in an earlier test. Every
    # torch.cuda call that starts CUDA goes through torch.cuda._lazy_init; count those calls.
    script = (
        "import torch\n"
        "calls = []\n"
        "start = torch.cuda._lazy_init\n"
        "torch.cuda._lazy_init = lambda: (calls.append(1), start())[1]\n"
        "from torchrepro.env import environment\n"
        "environment()\n"
        "print(len(calls), torch.cuda.is_initialized())\n"
    )
    proc = subprocess.run(
        [PYTHON, "-c", script], env=child_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.split() == ["0", "False"]


def test_git_commit_is_recorded_inside_a_repository(tmp_path: os.PathLike[str]) -> None:
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )
    try:
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, env=env)
        subprocess.run(
            ["git", "-C", str(tmp_path), "commit", "-q", "--allow-empty", "-m", "x"],
            check=True,
            env=env,
        )
        head = subprocess.run(
            ["git", "-C", str(tmp_path), "rev-parse", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not usable here")
    assert environment(cwd=str(tmp_path))["git"] == {"commit": head, "dirty": False}


def test_format_and_flatten_use_dotted_keys() -> None:
    manifest = {"torch": "2.13", "gpu": None, "threads": {"intra_op": 2}}
    assert flatten(manifest) == {"torch": "2.13", "gpu": None, "threads.intra_op": 2}
    assert format_environment(manifest).splitlines() == [
        "torch             2.13",
        "gpu               -",
        "threads.intra_op  2",
    ]


def test_cli_env_prints_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["env"]) == 0
    assert f"torch{' '}" in capsys.readouterr().out
    proc = subprocess.run(
        [sys.executable, "-m", "torchrepro", "env", "--json"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["torch"] == torch.__version__


def test_an_internal_error_exits_3_with_a_bug_report_hint_never_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken() -> dict[str, object]:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("torchrepro.env.environment", broken)
    assert main(["env"]) == 3
    err = capsys.readouterr().err
    assert "ZeroDivisionError: a bug" in err and "this is a bug in torchrepro" in err
