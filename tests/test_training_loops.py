"""Real training loops under the recorder and under check, in real processes.

A torch.compile'd model, FSDP2 on two gloo ranks, a hand-written update with no optimizer
(pytorch/examples' word_language_model), steps marked with torchrepro.step(), and optimizer
trainings that must keep exactly one entry per optimizer step.

The compiled model runs with backend="aot_eager": dynamo traces the recorder's hooks
exactly as with the default backend (inductor), but inductor's C++ compile takes about
30 s per fresh process on this machine's two cores.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import torchrepro
from conftest import BOOTSTRAP, PYTHON, SCRIPTS, TORCHRUN, child_env, run_recorded
from torchrepro.check import CheckReport, check_command
from torchrepro.digests import _digest_tensors, fingerprint
from torchrepro.distributed import _replicated
from torchrepro.errors import FingerprintError
from torchrepro.records import read_record

LOOPS = SCRIPTS / "loops"
COMPILED = [PYTHON, str(LOOPS / "compiled.py")]
FSDP2 = [*TORCHRUN, str(LOOPS / "fsdp2.py")]
HANDWRITTEN = [PYTHON, str(LOOPS / "handwritten.py")]
AOT_EAGER = {"COMPILE_BACKEND": "aot_eager"}


@pytest.fixture
def plant(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Variables set here reach the checked runs (check starts them from os.environ)."""
    monkeypatch.setenv("PYTHONPATH", child_env()["PYTHONPATH"])
    return monkeypatch


def crashed(report: CheckReport) -> list[str]:
    """The runs of a check that exited with an error (stopped runs have no status)."""
    return [r.stderr_tail for r in report.runs if r.returncode not in (0, None)]


# -- torch.compile -------------------------------------------------------------------


def test_a_compiled_model_trains_plain_under_run_and_recorded_with_one_graph(
    tmp_path: Path,
) -> None:
    for command in (COMPILED, [PYTHON, "-m", "torchrepro", "run", "--", *COMPILED]):
        proc = subprocess.run(
            command, env=child_env(**AOT_EAGER), capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "trained 6 graphs 1" in proc.stdout
    # Recorded without batches: the hooks stay, so dynamo's guards on them keep holding.
    proc = run_recorded(tmp_path / "run.jsonl", "loops/compiled.py", **AOT_EAGER)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained 6 graphs 1" in proc.stdout


def test_a_compiled_model_is_recorded_by_its_plain_names_with_its_batches(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run.jsonl"
    proc = run_recorded(
        out, "loops/compiled.py", TORCHREPRO_RECORD_WITH="grads,batch,rng", **AOT_EAGER
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "global hooks" not in proc.stderr  # the recorder expects the wrapper's extra call
    entries = read_record(out).entries
    assert [e["step"] for e in entries] == list(range(6))
    names = ["encoder.0.weight", "encoder.0.bias", "head.weight", "head.bias"]
    assert all(list(e["params"]) == list(e["grads"]) == names for e in entries)
    # One batch per step, the input the wrapper got, digested eagerly outside the graph.
    from loops import compiled

    torch.manual_seed(0)
    compiled.Net()
    data = torch.randn(6, 8, 4)
    assert [e["batch"] for e in entries] == [[{"batch 8x4 float32": fingerprint(x)}] for x in data]


def test_a_compiled_model_is_checked_identical_and_noise_diverges_at_its_step(
    plant: pytest.MonkeyPatch,
) -> None:
    plant.setenv("COMPILE_BACKEND", "aot_eager")
    report = check_command(COMPILED, seed=3)
    assert (report.verdict, report.steps_compared) == ("identical", 6), report.render()
    plant.setenv("PLANT_NOISE_STEP", "3")
    report = check_command(COMPILED, seed=3)
    assert report.divergence is not None, report.render()
    assert (report.divergence.step, report.divergence.section) == (3, "batch")
    assert not crashed(report)


# -- FSDP2 ---------------------------------------------------------------------------


def test_each_fsdp2_rank_records_its_own_shards_by_module_path(tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    proc = subprocess.run(
        [*TORCHRUN, "--no-python", PYTHON, "-c", BOOTSTRAP, str(LOOPS / "fsdp2.py")],
        env=child_env(
            TORCHREPRO_RECORD=str(out), TORCHREPRO_RECORD_WITH="grads", SHARDS_OUT=str(tmp_path)
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = []
    for rank in (0, 1):
        entries = read_record(tmp_path / f"run.rank{rank}.jsonl").entries
        assert [e["step"] for e in entries] == list(range(6))
        shards = json.loads((tmp_path / f"shards{rank}.json").read_text())
        assert entries[-1]["params"] == shards  # this rank's local shard, by module path
        assert (
            list(shards)
            == list(entries[-1]["grads"])
            == ["0.weight", "0.bias", "2.weight", "2.bias"]
        )
        last.append(entries[-1]["params"])
    assert all(last[0][name] != last[1][name] for name in last[0])  # each holds its own half


def test_fsdp2_is_checked_identical_and_noise_on_one_rank_diverges_at_its_step(
    plant: pytest.MonkeyPatch,
) -> None:
    report = check_command(FSDP2, seed=3)
    assert (report.verdict, report.steps_compared) == ("identical", 6), report.render()
    plant.setenv("PLANT_NOISE_STEP", "3")
    plant.setenv("PLANT_NOISE_RANK", "1")
    report = check_command(FSDP2, seed=3, localize=False)
    assert report.divergence is not None, report.render()
    assert (report.divergence.step, report.divergence.rank) == (3, 1)
    assert report.divergence.section == "batch"
    assert not crashed(report)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Any]:
    """A one-rank gloo group and device mesh in this process, taken down afterwards."""
    from torch.distributed.device_mesh import init_device_mesh

    url = f"file://{tmp_path / 'rendezvous'}"
    torch.distributed.init_process_group("gloo", init_method=url, rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        torch.distributed.destroy_process_group()


def test_a_dtensor_is_digested_as_its_local_shard_and_fingerprint_refuses_it(mesh: Any) -> None:
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    full = torch.arange(6.0).reshape(3, 2)
    sharded = distribute_tensor(full, mesh, [Shard(0)])
    assert _digest_tensors([sharded], shards=True).hexdigests() == [fingerprint(full)]
    with pytest.raises(FingerprintError, match=r"to_local\(\).*full_tensor\(\)"):
        fingerprint(sharded)
    # The replica check compares only what every rank holds whole.
    replicated = distribute_tensor(full, mesh, [Replicate()])
    assert [_replicated(t) for t in (full, replicated, sharded)] == [True, True, False]


# -- no optimizer: a hand-written update ----------------------------------------------


def test_a_hand_written_update_is_recorded_once_per_step_after_the_update(
    tmp_path: Path,
) -> None:
    out, final = tmp_path / "run.jsonl", tmp_path / "final.json"
    proc = run_recorded(
        out, "loops/handwritten.py", TORCHREPRO_RECORD_WITH="grads,batch", PARAMS_OUT=str(final)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    entries = read_record(out).entries
    # 2 epochs of 4 steps; the evaluation passes under no_grad are no steps.
    assert [(e["step"], e["optimizer"]) for e in entries] == [(k, None) for k in range(8)]
    from loops import handwritten

    names = [name for name, _ in handwritten.RNNModel().named_parameters()]
    assert all(list(e["params"]) == list(e["grads"]) == names for e in entries)
    assert entries[-1]["params"] == json.loads(final.read_text())  # after the last update
    assert len(entries[0]["batch"]) == 1  # the model's input; a loss module's is no batch


def test_a_hand_written_update_is_checked_identical_and_noise_diverges_at_its_step(
    plant: pytest.MonkeyPatch,
) -> None:
    report = check_command(HANDWRITTEN, seed=3)
    assert (report.verdict, report.steps_compared) == ("identical", 8), report.render()
    plant.setenv("PLANT_NOISE_STEP", "5")
    report = check_command(HANDWRITTEN, seed=3, localize=False)
    assert report.divergence is not None and report.divergence.step == 5, report.render()
    # Noise in the update itself shows in that step's parameters, taken after the update;
    # the replay's op tracer follows the same steps (no optimizer step to count).
    plant.setenv("PLANT_NOISE_IN", "update")
    report = check_command(HANDWRITTEN, seed=3)
    assert report.divergence is not None, report.render()
    assert (report.divergence.step, report.divergence.section) == (5, "params")
    assert report.localization is not None
    assert not crashed(report)


def test_a_run_with_no_step_at_all_names_torchrepro_step_as_the_fix() -> None:
    report = check_command([PYTHON, "-c", "import torch; torch.ones(2).sum()"], seed=3)
    assert report.verdict == "failed"
    assert "torchrepro.step()" in report.render()


# -- torchrepro.step() ---------------------------------------------------------------


def test_step_marks_the_steps_of_a_loop_with_no_optimizer_and_no_backward(
    tmp_path: Path,
) -> None:
    assert torchrepro.step() is False  # no recording: nothing happens
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    centers = torch.zeros(2, 3)
    with torch.no_grad(), torchrepro.record(tmp_path / "r.jsonl", batch=True) as recorder:
        for _ in range(4):
            x = torch.randn(8, 3)
            model.weight.copy_(0.5 * model.weight + model(x).T @ x / 8)
            centers += x[:2]
            torchrepro.log(centers=centers)
            assert torchrepro.step() is True
    entries = read_record(recorder.path).entries
    assert [(e["step"], e["optimizer"]) for e in entries] == [(k, None) for k in range(4)]
    assert all(list(e["params"]) == ["weight", "bias"] for e in entries)
    weights = [e["params"]["weight"] for e in entries]
    assert len(set(weights)) == 4 and entries[-1]["params"]["weight"] == fingerprint(model.weight)
    assert len({e["log"]["centers"] for e in entries}) == 4
    assert all(len(e["batch"]) == 1 for e in entries)


def test_step_adds_no_entry_to_a_step_the_recorder_already_wrote(tmp_path: Path) -> None:
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torchrepro.record(tmp_path / "r.jsonl") as recorder:
        for step in range(4):
            opt.zero_grad()
            model(torch.ones(2, 3)).sum().backward()
            if step % 2 == 0:
                opt.step()
            else:  # the same step, but the update by hand: written at step() right away
                for p in model.parameters():
                    p.data.add_(p.grad, alpha=-0.1)
            assert torchrepro.step() is True
            assert recorder.entries == step + 1
    entries = read_record(recorder.path).entries
    # Optimizer steps write their own entries; once one has, a backward pass is no step.
    assert [(e["step"], e["optimizer"]) for e in entries] == [(0, 0), (0, None), (1, 0), (1, None)]


# -- optimizer trainings keep one entry per optimizer step -------------------------------


def test_gradient_accumulation_gets_one_entry_per_optimizer_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    after = []
    with torchrepro.record(tmp_path / "r.jsonl", grads=True, batch=True) as recorder:
        for _ in range(3):
            for micro in range(4):  # four backward passes, parameters unchanged between them
                loss = model(torch.randn(2, 4)).pow(2).mean()
                torchrepro.log(**{f"loss{micro}": loss})
                loss.backward()
            opt.step()
            opt.zero_grad()
            after.append([fingerprint(p) for p in model.parameters()])
    entries = read_record(recorder.path).entries
    assert [(e["step"], e["optimizer"]) for e in entries] == [(0, 0), (1, 0), (2, 0)]
    assert [list(e["params"].values()) for e in entries] == after
    assert all(len(e["batch"]) == 4 and len(e["log"]) == 4 for e in entries)


def test_backward_passes_are_steps_only_until_the_first_optimizer_step(tmp_path: Path) -> None:
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torchrepro.record(tmp_path / "r.jsonl") as recorder:
        for step in range(5):
            model.zero_grad()
            model(torch.ones(2, 3)).sum().backward()
            if step < 2:  # a hand-written warm-up, then an optimizer
                for p in model.parameters():
                    p.data.add_(p.grad, alpha=-0.1)
            else:
                opt.step()
    entries = read_record(recorder.path).entries
    # The backward pass of the first optimizer step is that step's, not one of its own.
    assert [(e["step"], e["optimizer"]) for e in entries] == [
        (0, None),
        (1, None),
        (0, 0),
        (1, 0),
        (2, 0),
    ]


def test_step_is_public_and_check_reproducible_moved_to_torchrepro_check() -> None:
    assert "step" in torchrepro.__all__ and len(torchrepro.__all__) == 25
    assert torchrepro.step is torchrepro.records.step
    with pytest.raises(AttributeError, match=r"torchrepro\.check\.check_reproducible"):
        torchrepro.check_reproducible  # noqa: B018
