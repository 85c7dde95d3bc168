from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import PYTHON, SCRIPTS, child_env
from torchrepro.check import CheckReport, check_command, check_reproducible
from torchrepro.cli import main
from torchrepro.errors import CheckError

SCRIPT = [PYTHON, str(SCRIPTS / "check_train.py")]
KINDS = [PYTHON, str(SCRIPTS / "check_kinds.py")]


def torchrepro_check(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "torchrepro", "check", *args, "--", *SCRIPT],
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def plant(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Variables set here reach the checked runs (check starts them from os.environ)."""
    monkeypatch.setenv("PYTHONPATH", child_env()["PYTHONPATH"])
    return monkeypatch


def test_an_unchanged_script_is_reported_bitwise_identical(tmp_path: Path) -> None:
    result = torchrepro_check("--seed", "3", "--json", str(tmp_path / "report.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bitwise identical: 2 runs, 12 steps compared" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verdict"] == "identical" and report["steps_compared"] == 12


def test_noise_in_a_modules_forward_names_the_step_the_module_and_the_phase(
    plant: pytest.MonkeyPatch,
) -> None:
    plant.setenv("PLANT_NOISE_STEP", "3")
    report = check_command(SCRIPT, seed=3)
    assert report.exit_code == 1
    assert report.divergence is not None and report.divergence.step == 3
    assert report.divergence.section == "grads"
    assert report.localization is not None
    assert report.localization.module == "noisy"
    assert report.localization.phase == "forward"
    assert report.localization.kind == "input"
    text = report.render()
    assert "DIVERGED at step 3" in text and "noisy (forward)" in text
    assert "outside torch's ops" in text


def test_set_order_data_without_torchrepro_seeding_is_found_in_the_batch_at_step_0(
    plant: pytest.MonkeyPatch,
) -> None:
    plant.setenv("PLANT_SET_ORDER", "1")
    plant.delenv("PYTHONHASHSEED", raising=False)
    report = check_command(SCRIPT, no_seed=True, runs=3)
    assert report.exit_code == 1
    assert report.divergence is not None
    assert report.divergence.step == 0 and report.divergence.section == "batch"
    assert "PYTHONHASHSEED" in "\n".join(report.causes)
    assert "the input batch" in report.render()


def test_with_torchrepro_seeding_the_same_set_order_script_is_identical(
    plant: pytest.MonkeyPatch,
) -> None:
    plant.setenv("PLANT_SET_ORDER", "1")
    assert check_command(SCRIPT, seed=5).verdict == "identical"


def test_a_different_thread_count_per_run_is_reported_as_an_environment_difference(
    plant: pytest.MonkeyPatch,
) -> None:
    plant.setenv("PLANT_THREADS", "1")
    report = check_command(SCRIPT, seed=3)
    keys = [difference.key for difference in report.environment]
    assert any("threads" in key for key in keys), keys
    assert "thread" in report.render()


def test_a_run_that_crashes_exits_3_with_the_tail_of_its_stderr() -> None:
    result = torchrepro_check("--seed", "3", PLANT_CRASH_STEP="2")
    assert result.returncode == 3
    assert "planted crash at step 2" in result.stdout
    assert "exited with status 1 after 2 steps" in result.stdout


def test_lockstep_stops_a_long_training_soon_after_an_early_divergence(
    plant: pytest.MonkeyPatch,
) -> None:
    # 2000 steps of 10 ms: 20 s unstopped. Stopped within 500 steps leaves 5 s for the
    # comparison to notice and stop the runs, on a machine busy with other tests too.
    plant.setenv("PLANT_NOISE_STEP", "2")
    plant.setenv("STEPS", "2000")
    plant.setenv("STEP_SLEEP", "0.01")
    report = check_command(SCRIPT, seed=3, localize=False)
    assert report.divergence is not None and report.divergence.step == 2
    assert all(run.stopped for run in report.runs)
    assert max(run.steps for run in report.runs) < 500


def test_sequential_mode_and_max_steps(plant: pytest.MonkeyPatch) -> None:
    plant.setenv("STEPS", "50")
    report = check_command(SCRIPT, seed=3, lockstep=False, max_steps=7)
    assert report.verdict == "identical" and report.steps_compared == 7


def test_plot_draws_every_step_after_the_divergence(
    plant: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    plant.setenv("PLANT_NOISE_STEP", "4")
    report = check_command(SCRIPT, seed=3, localize=False, plot=tmp_path / "check.png")
    assert report.series["1-2"]["differing"][:4] == [0, 0, 0, 0]
    assert all(count > 0 for count in report.series["1-2"]["differing"][4:])
    assert (tmp_path / "check.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # How far apart, from the sizes beside the digests: nothing before, a gap from step 4 on.
    gaps = report.series["1-2"]["gap"]
    assert gaps[:4] == [0.0] * 4 and all(gap > 0 for gap in gaps[5:])
    assert report.divergence is not None and report.divergence.gap is not None
    assert report.growth == gaps[4:] and len(report.growth) >= 2
    text = report.render()
    assert f"  size: {report.divergence.gap.describe()}" in text
    assert "  growth: the largest relative gap of a parameter goes from" in text


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_check_leaves_no_run_behind(tmp_path: Path, sig: signal.Signals) -> None:
    piddir = tmp_path / "pids"
    piddir.mkdir()
    process = subprocess.Popen(
        [PYTHON, "-m", "torchrepro", "check", "--seed", "1", "--", *SCRIPT],
        env=child_env(PIDDIR=str(piddir), STEPS="100000", STEP_SLEEP="0.01"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As in a terminal's foreground. A suite started in the background of a shell
        # script inherits SIGINT ignored, and Python then leaves it ignored in the child.
        preexec_fn=functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while len(list(piddir.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    process.send_signal(sig)
    try:
        _, err = process.communicate(timeout=60)
    finally:  # a check that does not end is killed, and its pipes closed, whatever failed
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, err
    assert "every run was stopped" in err
    pids = [int(path.name) for path in piddir.iterdir()]
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_resume_at_stops_a_run_that_goes_on_past_its_step_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 100000 steps of 10 ms: only a check that stops the run at once ends within the timeout.
    monkeypatch.setenv("STEPS", "100000")
    monkeypatch.setenv("STEP_SLEEP", "0.01")
    report = check_command(SCRIPT, seed=1, resume_at=3, timeout=120)
    assert report.verdict == "failed", report.render()
    assert "asked to stop after step 3 but went on to step" in report.message
    assert "(check stopped it there)" in report.message


def test_usage_errors_exit_2() -> None:
    assert main(["check", "--runs", "1", "--", PYTHON, "-c", "pass"]) == 2
    assert main(["check"]) == 2
    with pytest.raises(CheckError, match="at least 2"):
        check_command(SCRIPT, runs=1)


RESUME_SCRIPT = [PYTHON, str(SCRIPTS / "resume_train.py")]


def test_resume_at_compares_a_stopped_and_resumed_run_with_an_uninterrupted_one(
    plant: pytest.MonkeyPatch,
) -> None:
    report = check_command(RESUME_SCRIPT, seed=7, resume_at=8)
    assert report.verdict == "identical", report.render()
    assert report.steps_compared == 18
    assert [run.name for run in report.runs] == ["run", "run", "resumed"]
    assert "stopped after step 8 and resumed" in report.render()


def test_resume_at_finds_a_resume_that_forgets_torchrepros_state(
    plant: pytest.MonkeyPatch,
) -> None:
    plant.setenv("FORGET_TORCHREPRO_STATE", "1")
    report = check_command(RESUME_SCRIPT, seed=7, resume_at=8, localize=False)
    assert report.verdict == "diverged"
    assert report.divergence is not None and report.divergence.entry >= 8
    assert "after the resume" in report.render()


def test_resume_at_says_when_the_script_ignores_the_stop_request() -> None:
    report = check_command(SCRIPT, seed=3, resume_at=4)
    assert report.exit_code == 3
    assert "TORCHREPRO_STOP_AT" in report.render()


def test_check_reproducible_runs_a_function_in_fresh_processes(
    plant: pytest.MonkeyPatch,
) -> None:
    from check_functions import train_briefly

    report = check_reproducible(train_briefly, steps=5, seed=1)
    assert report.verdict == "identical" and report.steps_compared == 5


def test_check_reproducible_refuses_a_function_no_process_can_import() -> None:
    with pytest.raises(CheckError, match="cannot be imported"):
        check_reproducible(lambda: None)


# ---------------------------------------------------------------- one test per verdict kind


def check_planted(plant: str, command: list[str] = KINDS, **options: Any) -> CheckReport:
    """check on check_kinds.py with PLANT set in every run (and this checkout importable)."""
    env = {"PYTHONPATH": child_env()["PYTHONPATH"], "PLANT": plant}
    return check_command(command, env=env, **options)


def test_an_op_giving_a_different_output_from_identical_inputs_is_named_with_its_module() -> None:
    report = check_planted("op", seed=3)
    assert report.verdict == "diverged"
    assert report.divergence is not None and report.divergence.step == 1
    assert report.divergence.section == "grads"
    where = report.localization
    assert where is not None and where.kind == "op"
    assert (where.module, where.op, where.phase) == (
        "mixer",
        "torchrepro_tests.noisy.default",
        "forward",
    )
    assert (
        "first differing module: mixer (forward): torchrepro_tests.noisy.default gave a "
        "different output from identical inputs"
    ) in report.render()
    assert report.diagnosis is not None
    assert (report.diagnosis.category, report.diagnosis.module) == ("nondeterministic-op", "mixer")
    assert "in the same environment" in report.diagnosis.evidence


def test_values_made_outside_torchs_ops_are_named_as_inputs_of_the_module_they_reach() -> None:
    report = check_planted("input", seed=3)
    assert report.divergence is not None and report.divergence.step == 1
    where = report.localization
    assert where is not None and where.kind == "input"
    assert (where.module, where.phase) == ("mixer", "forward")
    assert any("values made outside torch's ops reach mixer" in cause for cause in report.causes)
    assert report.diagnosis is not None and report.diagnosis.category == "outside-torch"
    assert not any("--deterministic" in cause for cause in report.causes)  # it would not help


def test_a_batch_that_differs_at_step_0_is_the_first_differing_record() -> None:
    report = check_planted("batch", seed=3)
    assert report.divergence is not None and report.divergence.step == 0
    assert report.divergence.section == "batch"
    assert report.localization is None  # a difference in the data is not replayed
    assert report.diagnosis is not None
    assert (report.diagnosis.category, report.diagnosis.step) == ("data", 0)
    assert report.render().count("diagnosis: data") == 1


NEVER_DREW = (
    "{} differs between the runs from step 0; the training never drew from it (its state "
    "stayed the same over the 3 steps compared, in both runs)"
)


def test_an_rng_state_that_differs_while_everything_computed_matches_is_a_note(
    tmp_path: Path,
) -> None:
    # The script seeds torch itself and never draws from numpy or Python's random: without
    # torchrepro seeding their states differ per run, and nothing computed does.
    result = subprocess.run(
        [PYTHON, "-m", "torchrepro", "check", "--no-seed", "--json", str(tmp_path / "r.json")]
        + ["--", *KINDS],
        env=child_env(PLANT=""),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("bitwise identical: 2 runs, 3 steps compared")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["diagnosis"] is None and report["causes"] == []
    for source in ("Python's random module", "numpy's global RNG"):
        assert NEVER_DREW.format(source) in report["notes"]
        assert NEVER_DREW.format(source) in result.stdout


def test_one_more_draw_before_training_is_a_note_when_nothing_computed_differs() -> None:
    report = check_planted("rng", seed=3)  # run 2 draws once from Python's random first
    assert report.verdict == "identical" and report.divergence is None
    assert report.notes[0] == NEVER_DREW.format("Python's random module")


def test_a_reseed_from_the_clock_is_diagnosed_by_the_rng_state_that_parts_first() -> None:
    report = check_planted("clock", seed=3, localize=False)
    assert report.divergence is not None and report.divergence.step == 2
    assert report.diagnosis is not None
    assert (report.diagnosis.category, report.diagnosis.step) == ("rng", 2)
    assert report.diagnosis.evidence.startswith(
        "torch's CPU generator differs from step 1, before the first computed difference"
    )
    assert report.notes[0].startswith(
        "torch's CPU generator differs between the runs from step 1; the training draws from it"
    )
    assert not any("--deterministic" in cause for cause in report.causes)
    assert "diagnosis: rng (a random draw differs because an RNG state differs)" in (
        report.render()
    )


@pytest.mark.parametrize("no_seed", [True, False], ids=["no-seed", "seeded"])
def test_a_run_whose_interpreter_salts_str_hashing_is_told_so(no_seed: bool) -> None:
    # `env` salts the run's own interpreter, even where check's seeding sets PYTHONHASHSEED.
    salted = ["env", "PYTHONHASHSEED=random", *KINDS]
    report = check_planted("set-order", salted, seed=3, no_seed=no_seed)
    assert report.divergence is not None and report.divergence.section == "batch"
    assert any("str hashing" in cause for cause in report.causes), report.causes
