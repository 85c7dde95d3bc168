from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from torchrepro.errors import RecordError
from torchrepro.records import SCHEMA_VERSION, RecordTail, rank_path
from torchrepro.records.files import process_path, rank_files
from torchrepro.records.format import header
from torchrepro.records.tail import RunTail


def line(obj: dict[str, Any]) -> str:
    return json.dumps(obj) + "\n"


def head(rank: int = 0, world_size: int = 1, argv: str = "", started: float = 0.0) -> str:
    process = {"argv": argv.split(), "pid": 1, "started": started}
    return line(
        header(rank=rank, world_size=world_size, options={}, env={}, created="now", process=process)
    )


def entry(step: int, digest: str = "aa") -> str:
    return line({"step": step, "optimizer": 0, "algorithm": "xxh3_128", "params": {"w": digest}})


def test_the_tail_reads_complete_lines_and_waits_for_a_partial_one(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    tail = RecordTail(path)
    tail.poll()  # no file yet: nothing, no error
    assert tail.header is None and tail.entries == []
    half = entry(1)[:10]
    path.write_text(head() + entry(0) + half)
    tail.poll()
    assert tail.header is not None and tail.header["schema_version"] == SCHEMA_VERSION
    assert [e["step"] for e in tail.entries] == [0]
    with path.open("a") as file:
        file.write(entry(1)[10:])
    tail.poll()
    assert [e["step"] for e in tail.entries] == [0, 1]


def test_a_torn_line_in_the_middle_raises_a_record_error_not_a_json_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text(head() + entry(0) + entry(1)[:15] + "\n" + entry(2))
    tail = RecordTail(path)
    with pytest.raises(RecordError, match="line 3 is corrupt") as caught:
        tail.poll()
    assert "expected one JSON entry per line" in str(caught.value)
    with pytest.raises(RecordError, match="line 3 is corrupt"):
        tail.poll()  # a corrupt line is never skipped
    assert [e["step"] for e in tail.entries] == [0]


def test_a_header_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    old = json.loads(head())
    old["schema_version"] = SCHEMA_VERSION - 1
    path.write_text(line(old) + entry(0))
    with pytest.raises(RecordError, match=f"schema version {SCHEMA_VERSION - 1}; expected"):
        RecordTail(path).poll()


def test_a_file_that_is_not_a_record_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text("hello\n")
    with pytest.raises(RecordError, match="torchrepro record header"):
        RecordTail(path).poll()


def test_rank_files_are_merged_step_by_step_once_every_rank_wrote_it(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    rank0, rank1 = rank_path(path, 2, 0), rank_path(path, 2, 1)
    rank0.write_text(head(0, 2) + entry(0, "a0") + entry(1, "a1"))
    rank1.write_text(head(1, 2) + entry(0, "b0"))
    tail = RecordTail(path)
    tail.poll()
    assert tail.header is not None and tail.header["rank"] == 0
    assert len(tail.entries) == 1
    assert [r["params"]["w"] for r in tail.entries[0]["ranks"]] == ["a0", "b0"]
    with rank1.open("a") as file:
        file.write(entry(1, "b1"))
    tail.poll()
    assert [e["step"] for e in tail.entries] == [0, 1]


def test_rank_files_are_found_by_their_exact_names_only(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    for name in ("run.rank0.jsonl", "run.rank1.jsonl", "run.rank01.jsonl", "run.rankx.jsonl"):
        (tmp_path / name).write_text("")
    (tmp_path / "other.rank0.jsonl").write_text("")
    assert rank_files(path) == {0: tmp_path / "run.rank0.jsonl", 1: tmp_path / "run.rank1.jsonl"}


def test_a_run_reads_each_training_process_from_its_own_record_in_order_of_start(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.jsonl"
    run = RunTail(path)
    run.poll()
    assert run.processes == [] and run.header is None
    # Claimed in the order of first steps: b, then a (which started first), then torchrun.
    path.write_text(head(argv="python b.py", started=2.0) + entry(0))
    process_path(path, 1).write_text(head(argv="python a.py", started=1.0) + entry(0) + entry(1))
    for rank in (0, 1):
        rank_path(path, 2, rank).write_text(head(rank, 2, "python -u c.py", 3.0) + entry(0))
    run.poll()
    assert [p.header["argv"][-1] for p in run.processes if p.header] == ["a.py", "b.py", "c.py"]
    assert [len(p.entries) for p in run.processes] == [2, 1, 1]
    assert len(run.processes[2].entries[0]["ranks"]) == 2  # the ranks of one training, merged
    assert run.header is not None and run.header["argv"] == ["python", "a.py"]
    assert run.steps == 4
