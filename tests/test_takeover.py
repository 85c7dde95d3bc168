"""Scripts that seed themselves: named once, taken over on request, their loaders left alone.

The claims about ``torchrepro run`` are tested on real separate processes running
``tests/scripts/self_seeding.py``, with the real transformers and Lightning; the arithmetic
and the library's behaviour in this process.
"""

from __future__ import annotations

import logging
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import torchrepro
from conftest import PYTHON, SCRIPTS, child_env
from torchrepro import data, derive_seed, seed_everything
from torchrepro._sources import seed_generator
from torchrepro.check import check_command
from torchrepro.cli import main
from torchrepro.errors import CheckError, SeedError
from torchrepro.launch import child_environment

SCRIPT = SCRIPTS / "self_seeding.py"
SAYS_IT = "This script seeds itself"


def seeding_line(mode: str) -> str:
    """``file:line`` of the script's line marked ``# seeds: MODE``."""
    lines = SCRIPT.read_text().splitlines()
    (number,) = [n for n, text in enumerate(lines, 1) if text.endswith(f"# seeds: {mode}")]
    return f"{SCRIPT}:{number}"


def run(mode: str, *options: str) -> subprocess.CompletedProcess[str]:
    """The script under ``python -m torchrepro run OPTIONS -- python self_seeding.py MODE``."""
    result = subprocess.run(
        [PYTHON, "-m", "torchrepro", "run", *options, "--", PYTHON, str(SCRIPT), mode],
        env=child_env(HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result


def plain(mode: str) -> str:
    """The script's digest when it runs with no torchrepro at all."""
    result = subprocess.run(
        [PYTHON, str(SCRIPT), mode], env=child_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[-1]


def warnings_of(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("torchrepro:")]


# ---------------------------------------------------------------- detection, in real runs


@pytest.mark.parametrize(
    ("mode", "call"),
    [
        ("torch", "torch.manual_seed(1111) reseeds torch"),
        ("numpy", "np.random.seed(1111) reseeds numpy"),
        ("random", "random.seed(1111) reseeds Python's random"),
        ("transformers", "transformers.trainer_utils.set_seed reseeds the process"),
    ],
)
def test_run_names_the_scripts_own_line_once_when_it_seeds_itself(mode: str, call: str) -> None:
    result = run(mode, "--seed", "11")
    (line,) = warnings_of(result)
    assert line.startswith(f"torchrepro: {seeding_line(mode)}: {call}")
    assert "its random streams do not follow --seed; pass --take-over" in line
    assert "site-packages" not in line  # the script's line, not the framework's


def test_without_take_over_the_scripts_own_seed_wins_over_the_seed_given() -> None:
    assert run("torch", "--seed", "11").stdout == run("torch", "--seed", "12").stdout


@pytest.mark.parametrize("mode", ["none", "internal"])
def test_run_says_nothing_when_only_torchrepro_seeds(mode: str) -> None:
    """internal: split_streams, sample_rng in 2 DataLoader workers and isolate_rng."""
    assert warnings_of(run(mode, "--seed", "11")) == []


# ---------------------------------------------------------------- take-over, in real runs


def test_take_over_makes_a_word_language_model_script_follow_the_seed() -> None:
    first = run("torch", "--seed", "11", "--take-over")
    again = run("torch", "--seed", "11", "--take-over")
    other = run("torch", "--seed", "12", "--take-over")
    assert first.stdout == again.stdout != other.stdout
    (line,) = warnings_of(first)
    assert line.startswith("torchrepro: take-over is active")
    assert f"torch.manual_seed(1111) at {seeding_line('torch')}" in line
    assert "derive_seed(11, 'take-over', 'torch', 1111)" in line


def test_check_takes_over_too(tmp_path: Path) -> None:
    report = check_command(
        [PYTHON, str(SCRIPT), "loader"], seed=11, take_over=True, workdir=tmp_path, env=child_env()
    )
    assert report.verdict == "identical", report.render()
    for name in ("run1.stderr", "run2.stderr"):
        assert "take-over is active" in (tmp_path / name).read_text()


# ---------------------------------------------------------------- loaders follow the script


def test_a_self_seeded_loader_with_workers_trains_under_run_as_it_does_plain() -> None:
    assert run("loader", "--seed", "11").stdout.split()[-1] == plain("loader")


def test_a_pl_seed_everything_script_trains_under_run_as_it_does_plain() -> None:
    result = run("lightning", "--seed", "11")
    assert result.stdout.split()[-1] == plain("lightning")
    (line,) = warnings_of(result)
    assert line.startswith(
        f"torchrepro: {seeding_line('lightning')}: "
        "lightning_fabric.utilities.seed.seed_everything reseeds the process"
    )
    assert "DataLoaders created from here on are left as PyTorch makes them" in line


# ---------------------------------------------------------------- in this process


def reseeds(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if SAYS_IT in r.getMessage()]


def test_nothing_is_said_before_torchrepro_seeded_the_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    torch.manual_seed(3)
    assert reseeds(caplog) == []
    seed_everything(11)
    torch.manual_seed(3)
    assert len(reseeds(caplog)) == 1


def test_each_call_site_is_named_once_and_the_call_does_what_it_always_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seed_everything(11)
    for _ in range(3):
        torch.manual_seed(5)  # one site, three calls; torch.cuda.manual_seed_all inside it
    assert torch.initial_seed() == 5
    random.seed(5)
    assert random.random() == random.Random(5).random()
    (torch_line, random_line) = reseeds(caplog)
    assert f"{__file__}:" in torch_line and "pass take_over=True" in torch_line
    assert "random.seed(5)" in random_line


def test_the_users_own_seed_everything_keeps_its_loader_seeding() -> None:
    seed_everything(11)
    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(torch.arange(8)), batch_size=2, shuffle=True)
    assert loader.generator is not None and data.loader_config() is not None


def test_torchrepros_own_seeding_is_never_reported(caplog: pytest.LogCaptureFixture) -> None:
    seed_everything(11)
    torchrepro.split_streams()
    with torchrepro.sample_rng(3), torchrepro.isolate_rng():
        torch.rand(1)
    torchrepro.seed_worker(0, seed=11)
    torchrepro.torch_generator("noise")
    with torchrepro.isolate_rng():
        seed_everything(12)
    assert reseeds(caplog) == []


def test_take_over_derives_each_call_from_the_root_seed_and_the_scripts_seed() -> None:
    seed_everything(11, take_over=True)
    torch.manual_seed(1)
    one = torch.rand(3)
    torch.manual_seed(2)
    two = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), one) and not torch.equal(one, two)
    expected = seed_generator(torch.Generator(), derive_seed(11, "take-over", "torch", 1))
    assert torch.equal(one, torch.rand(3, generator=expected))

    np.random.seed(7)
    seed = derive_seed(11, "take-over", "numpy", 7)
    assert np.random.rand() == np.random.RandomState([seed & 0xFFFFFFFF, seed >> 32]).rand()
    random.seed("run-a")
    expected_python = random.Random(derive_seed(11, "take-over", "python", "run-a"))
    assert random.random() == expected_python.random()


class InitialSeeds(torch.utils.data.Dataset[int]):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        return torch.initial_seed()


def test_pytorchs_own_worker_seeding_is_not_taken_over() -> None:
    def worker_seeds() -> list[int]:
        generator = torch.Generator().manual_seed(5)
        loader = DataLoader(InitialSeeds(), batch_size=1, num_workers=2, generator=generator)
        return sorted(int(seed) for seed in loader)

    as_pytorch_seeds_them = worker_seeds()
    seed_everything(11, workers=False, take_over=True)
    assert worker_seeds() == as_pytorch_seeds_them


def test_isolate_rng_puts_back_whether_seeding_is_taken_over() -> None:
    seed_everything(11)
    with torchrepro.isolate_rng():
        seed_everything(11, take_over=True)
    torch.manual_seed(1)
    assert torch.initial_seed() == 1


def test_a_bad_take_over_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHREPRO_TAKE_OVER", "yes")
    with pytest.raises(SeedError, match="got 'yes'"):
        seed_everything(11)


def test_the_child_environment_carries_take_over_only_when_asked() -> None:
    assert child_environment(11, base={}, take_over=True)["TORCHREPRO_TAKE_OVER"] == "1"
    inherited = {"TORCHREPRO_TAKE_OVER": "1"}
    assert child_environment(11, base=inherited)["TORCHREPRO_TAKE_OVER"] == "1"
    assert "TORCHREPRO_TAKE_OVER" not in child_environment(11, base=inherited, take_over=False)


def test_take_over_without_seeding_is_a_usage_error() -> None:
    assert main(["check", "--no-seed", "--take-over", "--", PYTHON, "-c", "pass"]) == 2
    with pytest.raises(CheckError, match="got both"):
        check_command([PYTHON, "-c", "pass"], no_seed=True, take_over=True)


def test_the_warning_goes_to_the_torchrepro_logger(caplog: pytest.LogCaptureFixture) -> None:
    seed_everything(11)
    np.random.seed(3)
    (record,) = [r for r in caplog.records if SAYS_IT in r.getMessage()]
    assert (record.name, record.levelno) == ("torchrepro", logging.WARNING)
