"""`torchrepro demo`: the quick demo runs as users run it, and its table says what it must."""

from __future__ import annotations

import shlex
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import torchrepro
from conftest import PYTHON, child_env
from torchrepro.cli import main
from torchrepro.demo import runs, workload
from torchrepro.demo.plot import PNG_NAME, plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class QuickDemo:
    returncode: int
    stdout: str
    stderr: str
    png: Path

    def rows(self) -> dict[str, dict[str, str]]:
        """The table, as {setup label: {column: cell}}."""
        lines = [line for line in self.stdout.splitlines() if line.startswith("| ")]
        header, *body = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
        return {cells[0]: dict(zip(header, cells)) for cells in body}


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> QuickDemo:
    out = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        [PYTHON, "-m", "torchrepro", "demo", "--quick", "--out", str(out)],
        env=child_env(TORCHREPRO_SEED="5", PYTHONHASHSEED="5"),  # must not leak into runs
        capture_output=True,
        text=True,
        timeout=300,
    )
    return QuickDemo(result.returncode, result.stdout, result.stderr, out / PNG_NAME)


def test_quick_demo_succeeds_with_one_row_per_setup(quick: QuickDemo) -> None:
    assert quick.returncode == 0, quick.stderr
    assert list(quick.rows()) == ["1 no seeding", "2 starting recipe", "3 torchrepro"]


def test_torchrepros_two_runs_are_bitwise_identical(quick: QuickDemo) -> None:
    row = quick.rows()["3 torchrepro"]
    assert row["bitwise identical"] == "yes"
    assert row["run 1 acc"] == row["run 2 acc"] and row["run 1 loss"] == row["run 2 loss"]
    assert row["acc spread"] == "0.00 pp"


def test_torchrepros_workers_draw_distinct_streams(quick: QuickDemo) -> None:
    assert quick.rows()["3 torchrepro"]["workers distinct"] == "yes: 4/4, 4/4"


def test_the_starting_recipes_workers_are_reported_as_duplicated(quick: QuickDemo) -> None:
    row = quick.rows()["2 starting recipe"]
    assert row["workers distinct"] == "NO: 1/4, 1/4"
    assert row["bitwise identical"] == "yes"


def test_unseeded_runs_end_with_different_parameters_despite_a_seed_in_the_parent(
    quick: QuickDemo,
) -> None:
    # The parent had TORCHREPRO_SEED and PYTHONHASHSEED set; the runs must not inherit them.
    assert quick.rows()["1 no seeding"]["bitwise identical"] == "no"


def test_the_demo_writes_a_valid_png_of_the_accuracy_curves(quick: QuickDemo) -> None:
    data = quick.png.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    length, kind, width, height = struct.unpack(">I4sII", data[8:24])
    assert (length, kind) == (13, b"IHDR") and width > 0 and height > 0
    image = pytest.importorskip("matplotlib.image").imread(quick.png)
    assert image.shape[:2] == (height, width)
    assert f"accuracy curves: {quick.png}" in quick.stdout


def test_the_demo_ends_with_the_measured_verdict_on_torchrepro(quick: QuickDemo) -> None:
    after_table = quick.stdout.split("| 3 torchrepro")[1]
    assert "setup 3's two runs ended with bitwise-identical final parameters" in after_table
    assert (
        "$ torchrepro check --seed 11 --max-steps 120 -- "
        "python -m torchrepro.demo --worker torchrepro --epochs 2 --train 512 --test 256"
    ) in after_table
    compared = after_table.split("bitwise identical: 2 runs, ")[1].split(" steps compared")[0]
    assert int(compared) > 0


def test_the_printed_check_command_repeats_the_check_when_pasted(quick: QuickDemo) -> None:
    line = next(line for line in quick.stdout.splitlines() if line.startswith("$ torchrepro "))
    argv = shlex.split(line.removeprefix("$ "))
    dashes = argv.index("--")
    assert argv[dashes + 1] == "python"
    # `torchrepro` and `python` as this test's interpreter spells them; the rest as printed.
    command = [PYTHON, "-m", *argv[: dashes + 1], PYTHON, *argv[dashes + 2 :]]
    result = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == quick.stdout.split(line + "\n")[1].strip()


def test_progress_is_shown_for_every_epoch_of_every_run(quick: QuickDemo) -> None:
    for label in ("1 no seeding", "2 starting recipe", "3 torchrepro"):
        for run in (1, 2):
            assert f"{label}, run {run}: epoch 2/2" in quick.stderr


def test_rendered_shapes_do_not_depend_on_the_global_rng() -> None:
    torch.manual_seed(1)
    first = workload.render_shapes(24, seed=3)
    torch.manual_seed(2)
    second = workload.render_shapes(24, seed=3)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert sorted(first[1].tolist()) == sorted(list(range(6)) * 4)


def test_runs_start_without_the_seeds_of_the_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    package = Path(torchrepro.__file__).resolve().parent
    bootstrap = str(package / "_bootstrap")
    monkeypatch.setenv("TORCHREPRO_SEED", "5")
    monkeypatch.setenv("PYTHONHASHSEED", "5")
    monkeypatch.setenv("TORCHREPRO_BOOTSTRAP", "1")
    monkeypatch.setenv("PYTHONPATH", bootstrap)
    env = runs._child_env()
    assert not {"TORCHREPRO_SEED", "PYTHONHASHSEED", "TORCHREPRO_BOOTSTRAP"} & set(env)
    assert env["PYTHONPATH"] == str(package.parent)


def test_without_matplotlib_the_demo_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    note = plot([], tmp_path / PNG_NAME)
    assert note is not None and "pip install 'torchrepro[plot]'" in note
    assert not (tmp_path / PNG_NAME).exists()


def test_a_failed_run_exits_with_status_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    false = shutil.which("false")
    if false is None:
        pytest.skip("needs the `false` command")
    monkeypatch.setattr(sys, "executable", false)  # every run exits 1 at once
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 3
    assert "failed with exit status 1" in capsys.readouterr().err


def test_zero_epochs_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--epochs", "0"]) == 2
    assert "must be an int >= 1" in capsys.readouterr().err
