from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import torchrepro
from conftest import PYTHON, SCRIPTS, child_env, finish, run_recorded, start_recorded
from torchrepro.cli import main
from torchrepro.compare import diff_records, rng_differences
from torchrepro.records import read_record
from torchrepro.records.format import entry_stats

PARAMS = ["features.0.weight", "features.0.bias", "head.weight", "head.bias"]


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three real runs of the same script: two plain, one with lr changed from step 5."""
    d = tmp_path_factory.mktemp("records")
    runs = {"a": {}, "b": {}, "planted": {"PLANT_LR_FROM": "5"}}
    # Started together: separate processes, as two real trainings would be.
    procs = [start_recorded(d / f"{name}.jsonl", STEPS="8", **env) for name, env in runs.items()]
    for proc in map(finish, procs):
        assert proc.returncode == 0, proc.stderr
    return {name: d / f"{name}.jsonl" for name in runs}


def test_two_runs_of_the_same_script_are_identical(records: dict[str, Path]) -> None:
    result = diff_records(records["a"], records["b"])
    assert result.identical and result.comparable
    assert result.env == () and result.steps_compared == 8
    assert "IDENTICAL: all 8 steps match" in result.render()


def test_a_planted_learning_rate_change_is_found_at_its_step(records: dict[str, Path]) -> None:
    result = diff_records(records["a"], records["planted"])
    assert not result.identical
    assert result.first_step == 5 and result.steps_compared == 6
    assert result.tensors == tuple(f"params.{n}" for n in PARAMS)
    text = result.render()
    assert "DIVERGED at step 5" in text and "params.head.weight" in text
    assert "optimizer" in text  # the hint points at the update, not the inputs


def test_cli_diff_exit_codes_say_identical_or_diverged(records: dict[str, Path]) -> None:
    env = dict(os.environ)
    same = subprocess.run(
        [sys.executable, "-m", "torchrepro", "diff", str(records["a"]), str(records["b"])],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert same.returncode == 0, same.stderr
    changed = subprocess.run(
        [
            sys.executable,
            "-m",
            "torchrepro",
            "diff",
            "--json",
            str(records["a"]),
            str(records["planted"]),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert changed.returncode == 1, changed.stderr
    report = json.loads(changed.stdout)
    assert report["first_step"] == 5 and "params.head.bias" in report["tensors"]


def test_environment_differences_come_first_with_a_reason(
    records: dict[str, Path], tmp_path: Path
) -> None:
    lines = records["b"].read_text().splitlines(keepends=True)
    header = json.loads(lines[0])
    header["env"]["threads"]["intra_op"] = 64
    header["env"]["determinism"]["cudnn_benchmark"] = True
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps(header) + "\n" + "".join(lines[1:]))
    result = diff_records(records["a"], other)
    assert result.identical  # digests decide; the environment is reported
    assert [d.key for d in result.env] == ["threads.intra_op", "determinism.cudnn_benchmark"]
    text = result.render()
    assert text.index("threads.intra_op") < text.index("IDENTICAL")
    assert "thread count" in text and "benchmark" in text


def test_records_of_different_digest_algorithms_are_not_comparable(
    records: dict[str, Path], tmp_path: Path
) -> None:
    lanes = tmp_path / "lanes.jsonl"
    proc = run_recorded(lanes, STEPS="2", TORCHREPRO_RECORD_ALGORITHM="lanes")
    assert proc.returncode == 0, proc.stderr
    result = diff_records(records["a"], lanes)
    assert not result.comparable and not result.identical and result.first_step is None
    assert "xxh3_128" in (result.reason or "") and "lanes64x2-v1" in (result.reason or "")
    assert main(["diff", str(records["a"]), str(lanes)]) == 2


def test_a_record_cut_short_is_reported_as_stopping_early(
    records: dict[str, Path], tmp_path: Path
) -> None:
    raw = records["b"].read_bytes()
    short = tmp_path / "short.jsonl"
    short.write_bytes(raw[: len(raw) - 40])  # a crash in the middle of the last entry
    result = diff_records(records["a"], short)
    assert read_record(short).truncated and result.truncated_b
    assert not result.identical and result.first_step is None and result.length_b == 7
    assert "B stops early" in result.render()


def test_cli_diff_of_a_file_that_is_not_a_record_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.jsonl"
    junk.write_text("hello\n")
    assert main(["diff", str(junk), str(junk)]) == 2
    assert "torchrepro record header" in capsys.readouterr().err
    assert main(["diff", str(junk)]) == 2  # missing argument


# ---------------------------------------------------------------- RNG states: notes, not verdicts


def record_numpy_run(path: Path, numpy_seed: int, draws: bool) -> Path:
    """Three steps of a training seeded by torch; numpy seeded apart, drawn from or not."""
    torch.manual_seed(0)
    np.random.seed(numpy_seed)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torchrepro.record(path, rng=True):
        for _ in range(3):
            if draws:
                np.random.rand()  # drawn, never used by the training
            opt.zero_grad()
            model(torch.randn(4, 2)).sum().backward()
            opt.step()
    return path


@pytest.mark.parametrize(
    ("draws", "says"),
    [
        (
            False,
            "the training never drew from it (its state stayed the same over the 3 steps "
            "compared, in both runs)",
        ),
        (True, "the training draws from it (its state changed between steps)"),
    ],
    ids=["never-drawn", "drawn"],
)
def test_diff_reports_an_rng_state_alone_as_a_note_on_identical_runs(
    tmp_path: Path, draws: bool, says: str
) -> None:
    a = record_numpy_run(tmp_path / "a.jsonl", 1, draws)
    b = record_numpy_run(tmp_path / "b.jsonl", 2, draws)
    result = diff_records(a, b)
    assert result.identical and result.diagnosis is None
    (found,) = result.rng
    assert (found.source, found.step, found.drawn) == ("numpy", 0, draws)
    assert result.render().endswith(
        f"IDENTICAL: all 3 steps match\nnote: numpy's global RNG differs between the runs from "
        f"step 0; {says}"
    )
    assert result.to_json()["rng"][0]["source"] == "numpy"


def test_rng_states_are_compared_rank_by_rank_and_after_a_resume_point() -> None:
    def merged(step: int, *torch_states: str) -> dict[str, Any]:
        ranks = [{"step": step, "rng": {"torch": state}} for state in torch_states]
        return {"step": step, "ranks": ranks}

    a = [merged(0, "a0", "b0"), merged(1, "a1", "b1"), merged(2, "a2", "b2")]
    b = [merged(0, "a0", "b0"), merged(1, "a1", "b1"), merged(2, "a2", "x2")]
    (found,) = rng_differences(a, b)
    assert (found.rank, found.entry, found.step, found.drew) == (1, 2, 2, (True, True))
    assert "from step 2 on rank 1" in found.describe()
    resumed = rng_differences(a, b[1:], skip=1)  # b counts from a's entry 1
    assert [(d.entry, d.steps) for d in resumed] == [(2, 2)]  # a's entry 2, of 2 compared
    assert rng_differences(a, b, count=2) == ()


def test_whether_a_generator_was_drawn_from_cannot_be_told_from_one_step() -> None:
    (found,) = rng_differences(
        [{"step": 0, "rng": {"python": "p1"}}], [{"step": 0, "rng": {"python": "p2"}}]
    )
    assert found.drawn is None
    assert found.describe().endswith(
        "whether the training draws from it cannot be told from one step"
    )


# -- two environments: how far apart, how fast, and within a tolerance -------------------


@pytest.fixture(scope="module")
def two_thread_counts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("threads")
    paths = []
    for threads in (1, 2):
        path = folder / f"threads{threads}.jsonl"
        script = str(SCRIPTS / "threads_train.py")
        done = subprocess.run(
            [PYTHON, script, str(path), str(threads)], env=child_env(), capture_output=True
        )
        assert done.returncode == 0, done.stderr[-2000:]
        paths.append(path)
    return paths[0], paths[1]


def test_diff_of_two_environments_gives_where_they_part_by_how_much_and_how_fast(
    two_thread_counts: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = two_thread_counts
    result = diff_records(a, b)
    assert [d.key for d in result.env] == ["threads.intra_op"]
    assert not result.identical and result.first_step == 0
    assert result.gap is not None and 0 < result.gap.relative < 1e-5  # last bits only
    assert len(result.growth) == 8 and result.growth[-1] > 0
    assert main(["diff", str(a), str(b)]) == 1
    text = capsys.readouterr().out
    assert "size at the first difference: " in text and ", at least" in text
    assert "growth: the largest relative gap of a parameter goes from" in text


def test_a_tolerance_turns_bitwise_into_within_tolerance_and_says_what_was_compared(
    two_thread_counts: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = two_thread_counts
    assert main(["diff", "--rtol", "1e-3", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "WITHIN TOLERANCE (rtol=0.001, atol=0): bitwise they part at step 0" in text
    assert "not elementwise" in text and "IDENTICAL" not in text
    tight = diff_records(a, b, rtol=1e-12)
    assert not tight.within_tolerance and tight.first_step == 0


def test_recorded_sizes_are_the_tensors_norms(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torchrepro.record(tmp_path / "r.jsonl", grads=True):
        opt.zero_grad()
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
    sizes = entry_stats(read_record(tmp_path / "r.jsonl").entries[0])
    w = model.weight.detach().double()
    assert sizes["params.weight"] == [w.abs().sum().item(), w.norm().item(), w.abs().max().item()]
    assert sizes["grads.bias"] == [2.0, 2.0**0.5, 1.0]
