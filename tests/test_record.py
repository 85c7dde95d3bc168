from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import torchrepro
from conftest import BOOTSTRAP, PYTHON, SCRIPTS, TORCHRUN, child_env, run_recorded
from torchrepro import _sources
from torchrepro.digests import fingerprint
from torchrepro.errors import RecordError
from torchrepro.records import SCHEMA_VERSION, read_record, start_from_env

CNN_NAMES = ["features.0.weight", "features.0.bias", "head.weight", "head.bias"]


def tiny_training(steps: int = 3, *, log: bool = True) -> tuple[nn.Module, list[str]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    final: list[str] = []
    for _ in range(steps):
        loss = model(torch.randn(5, 4)).pow(2).mean()
        if log:
            torchrepro.log(loss=loss, note="ok")
        opt.zero_grad()
        loss.backward()
        opt.step()
        final = [fingerprint(p) for p in model.parameters()]
    return model, final


def test_a_script_without_torchrepro_calls_is_recorded_step_by_step(tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    proc = run_recorded(out, STEPS="6")
    assert proc.returncode == 0, proc.stderr
    rec = read_record(out)
    assert rec.header["schema_version"] == SCHEMA_VERSION
    assert rec.env["torch"] == torch.__version__
    assert not rec.truncated
    assert [e["step"] for e in rec.entries] == list(range(6))
    for entry in rec.entries:
        assert list(entry["params"]) == CNN_NAMES
        assert entry["algorithm"] == "xxh3_128"
    # Parameters change every step, so every digest differs from the previous one.
    for before, after in zip(rec.entries, rec.entries[1:]):
        assert all(before["params"][n] != after["params"][n] for n in CNN_NAMES)


def test_recorded_digests_are_the_parameters_after_each_step(tmp_path: Path) -> None:
    with torchrepro.record(tmp_path / "r.jsonl") as recorder:
        model, final = tiny_training(3)
    rec = read_record(recorder.path)
    assert len(rec.entries) == recorder.entries == 3
    assert list(rec.entries[-1]["params"].values()) == final
    assert list(rec.entries[-1]["params"]) == [n for n, _ in model.named_parameters()]
    loss = rec.entries[0]["log"]["loss"]
    assert isinstance(loss, float) and math.isfinite(loss) and rec.entries[0]["log"]["note"] == "ok"


def test_optional_grads_batch_and_rng_are_recorded(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(5, 4)
    recorder = torchrepro.record(tmp_path / "r.jsonl", grads=True, batch=True, rng=True)
    model(x).sum().backward()
    opt.step()
    recorder.close()
    (entry,) = read_record(recorder.path).entries
    assert entry["grads"] == {
        "weight": fingerprint(model.weight.grad),
        "bias": fingerprint(model.bias.grad),
    }  # type: ignore[arg-type]
    assert entry["batch"] == [{"batch 5x4 float32": fingerprint(x)}]  # fed by hand: the input
    assert list(entry["rng"])[:3] == ["python", "numpy", "torch"]  # in the table's order
    (torch_source,) = (s for s in _sources.available_sources() if s.name == "torch")
    assert entry["rng"]["torch"] == fingerprint(torch_source.encode(torch_source.get_state()))


def test_rng_digests_cover_registered_generators_and_follow_their_state(tmp_path: Path) -> None:
    augment = np.random.default_rng(0)
    name = torchrepro.register_generator(augment, "augment")
    try:
        weight = nn.Parameter(torch.ones(2))
        opt = torch.optim.SGD([weight], lr=0.1)
        with torchrepro.record(tmp_path / "r.jsonl", rng=True) as recorder:
            opt.step()
            augment.random()
            opt.step()
            opt.step()
    finally:
        _sources.unregister(name)
    first, second, third = (e["rng"] for e in read_record(recorder.path).entries)
    assert name in first and first[name] != second[name] == third[name]
    assert first["torch"] == second["torch"] == third["torch"]


def test_parameters_of_modules_that_never_ran_are_named_by_group_and_index(
    tmp_path: Path,
) -> None:
    w = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([{"params": [w]}, {"params": [nn.Parameter(torch.zeros(2))]}], lr=1)
    with torchrepro.record(tmp_path / "r.jsonl") as recorder:
        w.sum().backward()
        opt.step()
    assert list(read_record(recorder.path).entries[0]["params"]) == ["group0.0", "group1.0"]


def test_lane_algorithm_can_be_chosen_for_records(tmp_path: Path) -> None:
    with torchrepro.record(tmp_path / "r.jsonl", algorithm="lanes") as recorder:
        _, final = tiny_training(1, log=False)
    (entry,) = read_record(recorder.path).entries
    assert entry["algorithm"] == "lanes64x2-v1"
    model, _ = tiny_training(1, log=False)
    assert list(entry["params"].values()) == [
        fingerprint(p, algorithm="lanes") for p in model.parameters()
    ]


def test_a_second_recording_while_one_is_active_is_refused(tmp_path: Path) -> None:
    with torchrepro.record(tmp_path / "a.jsonl"):
        with pytest.raises(RecordError, match="already active"):
            torchrepro.record(tmp_path / "b.jsonl")


def test_log_without_a_recording_does_nothing_and_says_so() -> None:
    assert torchrepro.log(loss=1.0) is False
    with pytest.raises(RecordError, match="expected a number"):
        torchrepro.log(loss=[1.0])  # type: ignore[arg-type]


def test_a_hard_crash_keeps_every_step_before_it(tmp_path: Path) -> None:
    out = tmp_path / "crash.jsonl"
    proc = run_recorded(out, STEPS="8", CRASH_AT="5")
    assert proc.returncode == 7  # os._exit: no atexit, no flush at exit
    assert [e["step"] for e in read_record(out).entries] == [0, 1, 2, 3, 4]


def test_a_record_cut_mid_write_reads_back_to_its_last_complete_entry(tmp_path: Path) -> None:
    with torchrepro.record(tmp_path / "full.jsonl") as recorder:
        tiny_training(4)
    raw = recorder.path.read_bytes()
    lines = raw.split(b"\n")
    assert len(lines) == 6 and lines[-1] == b""  # header, 4 entries, final newline
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(raw[: len(raw) - len(lines[-2]) // 2 - 1])  # half of the last entry
    rec = read_record(cut)
    assert rec.truncated and [e["step"] for e in rec.entries] == [0, 1, 2]
    assert rec.entries == read_record(recorder.path).entries[:3]
    # Cut right after a newline: nothing partial, nothing lost beyond the cut.
    cut.write_bytes(b"\n".join(lines[:3]) + b"\n")
    rec = read_record(cut)
    assert not rec.truncated and len(rec.entries) == 2


def test_corrupt_records_raise_with_what_was_expected(tmp_path: Path) -> None:
    with torchrepro.record(tmp_path / "r.jsonl") as recorder:
        tiny_training(3)
    lines = recorder.path.read_text().splitlines(keepends=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines[0] + "{not json\n" + "".join(lines[2:]))
    with pytest.raises(RecordError, match="line 2 is corrupt"):
        read_record(bad)
    header = json.loads(lines[0])
    header["schema_version"] = SCHEMA_VERSION + 1
    bad.write_text(json.dumps(header) + "\n" + "".join(lines[1:]))
    with pytest.raises(RecordError, match="schema version"):
        read_record(bad)
    bad.write_text("")
    with pytest.raises(RecordError, match="header"):
        read_record(bad)
    with pytest.raises(RecordError, match="cannot read"):
        read_record(tmp_path / "missing.jsonl")


def test_each_torchrun_rank_writes_its_own_record(tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    # Each rank starts the recorder from the environment, as the `torchrepro run` bootstrap
    # does; the launcher itself never steps, so it writes nothing.
    proc = subprocess.run(
        [*TORCHRUN, "--no-python", PYTHON, "-c", BOOTSTRAP, str(SCRIPTS / "train_cnn.py")],
        env=child_env(TORCHREPRO_RECORD=str(out), STEPS="3"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.rank0.jsonl", "run.rank1.jsonl"]
    for rank in (0, 1):
        rec = read_record(tmp_path / f"run.rank{rank}.jsonl")
        assert (rec.header["rank"], rec.header["world_size"]) == (rank, 2)
        assert (rec.env["rank"], rec.env["world_size"]) == (rank, 2)
        assert [e["step"] for e in rec.entries] == [0, 1, 2]


def test_world_size_from_the_environment_inserts_the_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    weight = torch.nn.Parameter(torch.ones(2))
    with torchrepro.record(tmp_path / "run.jsonl") as recorder:
        torch.optim.SGD([weight], lr=0.1).step()
    assert recorder.path == tmp_path / "run.rank1.jsonl"
    assert read_record(recorder.path).header["rank"] == 1


def test_a_process_that_never_steps_leaves_no_record(tmp_path: Path) -> None:
    with torchrepro.record(tmp_path / "run.jsonl"):
        pass
    assert not (tmp_path / "run.jsonl").exists()


def test_start_from_env_reads_path_and_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert start_from_env() is None
    monkeypatch.setenv("TORCHREPRO_RECORD", str(tmp_path / "e.jsonl"))
    monkeypatch.setenv("TORCHREPRO_RECORD_WITH", "grads, rng")
    recorder = start_from_env()
    assert recorder is not None and recorder.grads and recorder.rng and not recorder.batch
    recorder.close()
    monkeypatch.setenv("TORCHREPRO_RECORD_WITH", "grads,weights")
    with pytest.raises(RecordError, match="weights"):
        start_from_env()


# -- I/O: checked where recording starts; a later error never stops the training --------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"algorithm": "bogus"}, "unknown digest algorithm 'bogus'"),
        ({"grads": "yes"}, "grads must be True or False"),
    ],
)
def test_record_checks_its_options_at_the_call(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    with pytest.raises(RecordError, match=message):
        torchrepro.record(tmp_path / "r.jsonl", **options)  # type: ignore[arg-type]
    assert torchrepro.records.recording.active() is None


def test_record_refuses_a_folder_or_a_path_under_a_file_at_the_call(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match="it is a folder"):
        torchrepro.record(tmp_path)
    (tmp_path / "afile").write_text("")
    with pytest.raises(RecordError, match="is not a folder this process can write in"):
        torchrepro.record(tmp_path / "afile" / "r.jsonl")


def run_limited(path: Path, steps: int, limit: int | None) -> subprocess.CompletedProcess[str]:
    args = [str(path), str(steps), *([str(limit)] if limit else [])]
    script = str(SCRIPTS / "record_limits.py")
    return subprocess.run(
        [PYTHON, script, *args], env=child_env(), capture_output=True, text=True, timeout=120
    )


def test_a_write_error_mid_run_stops_the_recorder_loudly_and_the_training_goes_on(
    tmp_path: Path,
) -> None:
    free = run_limited(tmp_path / "free.jsonl", 40, None)
    limited = run_limited(tmp_path / "limited.jsonl", 40, 6000)
    assert limited.returncode == 0, limited.stderr[-2000:]
    assert limited.stdout == free.stdout  # the same training, to the last step
    assert limited.stderr.count("stopped after") == 1  # one warning, no traceback
    assert "Traceback" not in limited.stderr
    record = read_record(tmp_path / "limited.jsonl")
    assert 0 < len(record.entries) < 40
    assert record.incomplete is not None and "File too large" in record.incomplete
    assert read_record(tmp_path / "free.jsonl").incomplete is None


def test_check_reports_a_run_whose_record_stopped_as_incomplete_not_diverged(
    tmp_path: Path,
) -> None:
    from torchrepro.check import check_command

    command = [PYTHON, str(SCRIPTS / "record_limits.py"), "unused", "40", "6000"]
    env = {"LIMIT_IN_RUN": "2", "PYTHONPATH": child_env()["PYTHONPATH"]}
    report = check_command(command, seed=1, env=env, workdir=tmp_path)
    assert report.verdict == "failed", report.render()
    assert "the record of run 2 is incomplete" in report.message
    assert report.exit_code == 3


def test_a_second_process_on_the_same_record_path_leaves_the_first_ones_record_whole(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shared.jsonl"
    with torchrepro.record(path) as recorder:
        model, _ = tiny_training(2, log=False)
        other = run_limited(path, 5, None)  # the same path, while this one writes it
        assert other.returncode == 0, other.stderr[-2000:]
        assert "another process is writing the record" in other.stderr
        assert recorder.entries == 2
    assert len(read_record(path).entries) == 2


def write_record(path: Path, entry: object, header: dict[str, object] | None = None) -> Path:
    head = {"format": "torchrepro-record", "schema_version": SCHEMA_VERSION, **(header or {})}
    path.write_text(json.dumps(head) + "\n" + json.dumps(entry) + "\n")
    return path


@pytest.mark.parametrize(
    ("entry", "header", "message"),
    [
        ({"step": 0, "params": 5}, None, '"params" is not an object of names to digests'),
        ({"step": 0, "params": {}, "batch": "x"}, None, '"batch" is not a list'),
        ({"step": "0", "params": {}}, None, "\"step\" is '0'"),
        ({"step": 0, "params": {}}, {"env": []}, "env or options is not an object"),
    ],
    ids=["params-int", "batch-str", "step-str", "env-list"],
)
def test_diff_of_a_malformed_record_is_a_record_error_exit_2_never_1(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    entry: object,
    header: dict[str, object] | None,
    message: str,
) -> None:
    from torchrepro.cli import main

    bad = write_record(tmp_path / "bad.jsonl", entry, header)
    good = write_record(tmp_path / "good.jsonl", {"step": 0, "params": {}})
    assert main(["diff", str(good), str(bad)]) == 2
    assert message in capsys.readouterr().err


def test_a_record_cut_inside_its_header_says_so(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl"
    path.write_text('{"format":"torchrepro-record","schema_version":3,"created":"2026')
    with pytest.raises(RecordError, match="is cut inside its header"):
        read_record(path)
