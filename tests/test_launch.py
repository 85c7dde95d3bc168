from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import PYTHON, SCRIPTS, child_env
from torchrepro import derive_seed
from torchrepro.cli import main
from torchrepro.launch import child_environment, run_command

HASH_SCRIPT = "print(hash('abc'), sorted({'a', 'b', 'c'}) == list('abc'), list({'x', 'y', 'z'}))"


def torchrepro_run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "torchrepro", "run", *args],
        env=child_env(**env),
        capture_output=True,
        text=True,
    )


def test_run_makes_str_hashing_repeat_across_runs() -> None:
    first = torchrepro_run("--seed", "11", "--", PYTHON, "-c", HASH_SCRIPT)
    second = torchrepro_run("--seed", "11", "--", PYTHON, "-c", HASH_SCRIPT)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    other = torchrepro_run("--seed", "12", "--", PYTHON, "-c", HASH_SCRIPT)
    assert other.stdout.split()[0] != first.stdout.split()[0]


def test_plain_python_salts_str_hashing_per_run() -> None:
    def run() -> str:
        return subprocess.run([PYTHON, "-c", HASH_SCRIPT], env=child_env(), capture_output=True,
                              text=True).stdout

    assert run() != run()


def test_run_seeds_an_unchanged_script_before_it_runs() -> None:
    script = [PYTHON, str(SCRIPTS / "train_aug.py"), "--plain"]
    first = torchrepro_run("--seed", "11", "--", *script)
    second = torchrepro_run("--seed", "11", "--", *script)
    assert first.returncode == 0, first.stderr
    assert len(first.stdout.strip()) == 64
    assert first.stdout == second.stdout


def test_run_applies_the_requested_determinism_in_the_child() -> None:
    script = "import torch; print(torch.are_deterministic_algorithms_enabled(), " \
             "torch.is_deterministic_algorithms_warn_only_enabled())"
    assert torchrepro_run("--warn", "--", PYTHON, "-c", script).stdout.split() == ["True", "True"]
    assert torchrepro_run("--", PYTHON, "-c", script).stdout.split() == ["False", "False"]


def test_run_exits_with_the_commands_status() -> None:
    result = torchrepro_run("--seed", "1", "--", PYTHON, "-c", "raise SystemExit(7)")
    assert result.returncode == 7


def test_run_refuses_a_bad_seed_as_a_usage_error() -> None:
    result = torchrepro_run("--seed", "-1", "--", PYTHON, "-c", "print('ran')")
    assert result.returncode == 2
    assert "got -1" in result.stderr and "ran" not in result.stdout


def test_run_without_a_command_is_a_usage_error() -> None:
    assert main(["run", "--seed", "1"]) == 2


def test_run_without_a_seed_prints_the_one_it_drew() -> None:
    result = torchrepro_run("--", PYTHON, "-c", "import os; print(os.environ['TORCHREPRO_SEED'])")
    assert result.returncode == 0
    assert f"using seed {result.stdout.strip()}" in result.stderr


def test_the_child_environment_carries_the_derived_hash_seed() -> None:
    env = child_environment("abc", deterministic=True, base={"PYTHONPATH": "/x"})
    seed = int(env["TORCHREPRO_SEED"])
    assert env["PYTHONHASHSEED"] == str(derive_seed(seed, "pythonhash") % 2**32)
    assert env["PYTHONPATH"].endswith("/x") and env["TORCHREPRO_DETERMINISTIC"] == "1"


def test_a_python_that_cannot_import_torchrepro_fails_instead_of_running_unseeded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "torchrepro"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('not installed here')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    code = run_command([PYTHON, "-c", "print('ran')"], seed=1)
    out, err = capfd.readouterr()
    assert code == 3
    assert "cannot import torchrepro" in err and "ran" not in out
