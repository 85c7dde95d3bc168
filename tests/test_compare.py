from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import finish, run_recorded, start_recorded
from torchrepro.cli import main
from torchrepro.compare import diff_records
from torchrepro.records import read_record

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
