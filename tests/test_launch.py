from __future__ import annotations

import os
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
        return subprocess.run(
            [PYTHON, "-c", HASH_SCRIPT], env=child_env(), capture_output=True, text=True
        ).stdout

    assert run() != run()


def test_run_seeds_an_unchanged_script_before_it_runs() -> None:
    script = [PYTHON, str(SCRIPTS / "train_aug.py"), "--plain"]
    first = torchrepro_run("--seed", "11", "--", *script)
    second = torchrepro_run("--seed", "11", "--", *script)
    assert first.returncode == 0, first.stderr
    assert len(first.stdout.strip()) == 64
    assert first.stdout == second.stdout


def test_run_applies_the_requested_determinism_in_the_child() -> None:
    script = (
        "import torch; print(torch.are_deterministic_algorithms_enabled(), "
        "torch.is_deterministic_algorithms_warn_only_enabled())"
    )
    assert torchrepro_run("--warn", "--", PYTHON, "-c", script).stdout.split() == ["True", "True"]
    assert torchrepro_run("--", PYTHON, "-c", script).stdout.split() == ["False", "False"]


def test_run_exits_with_the_commands_status() -> None:
    result = torchrepro_run("--seed", "1", "--", PYTHON, "-c", "raise SystemExit(7)")
    assert result.returncode == 7


def test_run_refuses_a_bad_seed_as_a_usage_error() -> None:
    result = torchrepro_run("--seed", "-1", "--", PYTHON, "-c", "print('ran')")
    assert result.returncode == 2
    assert "got '-1'" in result.stderr and "ran" not in result.stdout


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


def test_run_of_a_missing_command_says_it_cannot_start_it() -> None:
    result = torchrepro_run("--seed", "1", "--", "no-such-command-here")
    assert result.returncode == 3
    assert "cannot start 'no-such-command-here'" in result.stderr


def test_run_becomes_the_command_with_no_process_left_beside_it() -> None:
    result = torchrepro_run("--seed", "1", "--", PYTHON, "-c", "import os; print(os.getppid())")
    assert int(result.stdout) == os.getpid()


def test_the_launching_processes_of_run_and_check_never_import_torch() -> None:
    # run: the launcher's own imports, before it becomes the command (`true` imports nothing).
    launcher = subprocess.run(
        [PYTHON, "-X", "importtime", "-m", "torchrepro", "run", "--seed", "1", "--", "true"],
        env=child_env(),
        capture_output=True,
        text=True,
    )
    assert launcher.returncode == 0, launcher.stderr
    modules = {line.rsplit("|", 1)[-1].strip() for line in launcher.stderr.splitlines()}
    assert "torchrepro.launch" in modules and not {"torch", "numpy"} & modules
    # check: the whole verb, runs included (they record nothing here, so it fails with 3).
    code = (
        "import sys; from torchrepro.cli import main; "
        "status = main(['check', '--seed', '1', '--', sys.executable, '-c', 'pass']); "
        "print(status, 'torch' in sys.modules, 'numpy' in sys.modules)"
    )
    checker = subprocess.run([PYTHON, "-c", code], env=child_env(), capture_output=True, text=True)
    assert checker.stdout.splitlines()[-1] == "3 False False", checker.stderr


def test_a_sitecustomize_that_raises_stops_the_run_instead_of_running_it_unseeded(
    tmp_path: Path,
) -> None:
    (tmp_path / "sitecustomize.py").write_text("raise RuntimeError('site setup broke')\n")
    pythonpath = os.pathsep.join([str(tmp_path), child_env()["PYTHONPATH"]])
    result = torchrepro_run(
        "--seed", "1", "--", PYTHON, "-c", "print('ran')", PYTHONPATH=pythonpath
    )
    assert result.returncode == 3
    assert "ran" not in result.stdout
    assert "RuntimeError: site setup broke" in result.stderr  # the user's traceback
    assert "sitecustomize module (above) raised" in result.stderr
    # check reports the run that failed with what it said, not "no run wrote a record".
    from torchrepro.check import check_command

    report = check_command([PYTHON, "-c", "print('ran')"], seed=1, env={"PYTHONPATH": pythonpath})
    assert report.verdict == "failed"
    assert "sitecustomize module (above) raised" in report.render()


def test_run_killed_by_sigterm_takes_its_command_with_it() -> None:
    # run becomes the command: the signal sent to the pid it was started as reaches it.
    process = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "torchrepro",
            "run",
            "--seed",
            "1",
            "--",
            PYTHON,
            "-c",
            "import time; print('up', flush=True); time.sleep(600)",
        ],
        env=child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline() == "up\n"
    process.terminate()
    assert process.wait(30) == -15
    process.stdout.close()
