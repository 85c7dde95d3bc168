"""Localization: the op tracer of a replay and the first op at which two traces part."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import PYTHON, SCRIPTS, TORCHRUN, child_env
from torchrepro._modules import Modules
from torchrepro._tracer import _Tracer
from torchrepro.check import CheckReport, check_command
from torchrepro.localize import (
    OVERWRITTEN,
    UNWRITTEN,
    first_difference,
    read_trace,
    trace_event,
)

TRAIN = [PYTHON, str(SCRIPTS / "localize_train.py")]


def check_planted(plant: str, command: list[str] = TRAIN, **options: Any) -> CheckReport:
    env = {"PYTHONPATH": child_env()["PYTHONPATH"], "PLANT": plant, "HF_HUB_OFFLINE": "1"}
    return check_command(command, seed=3, env={**env, **options.pop("env", {})}, **options)


# ---------------------------------------------------------------- traces, compared


def test_ops_that_compute_nothing_are_not_lined_up_so_a_batch_may_arrive_any_time() -> None:
    # A DataLoader worker's batch is rebuilt (empty + set_) whenever it arrives.
    def event(op: str, out: str, inputs: tuple[str, ...] = ()) -> dict[str, Any]:
        return trace_event(op, "fc", "forward", list(inputs), [out])

    arrive = [event("aten.empty.memory_format", UNWRITTEN), event("aten.set_.source_Storage", "b")]
    compute = [event("aten.mm.default", "y", ("b", "w"))]
    assert first_difference(arrive + compute, compute + arrive).kind == "none"
    noisy = [event("aten.mm.default", "y", ("b2", "w"))]
    found = first_difference(arrive + compute, noisy + arrive)
    assert (found.kind, found.op, found.index) == ("input", "aten.mm.default", 2)


def test_an_argument_made_in_python_is_an_input_that_differs() -> None:
    a = trace_event("aten.mul.Tensor", "fc", "forward", ["x"], ["y"], arguments="0.5")
    b = trace_event("aten.mul.Tensor", "fc", "forward", ["x"], ["y2"], arguments="0.7")
    assert first_difference([a], [b]).kind == "input"


def traced(run: Any) -> list[dict[str, Any]]:
    """The trace of ``run()`` in this process, with its modules named."""
    with Modules() as modules, _Tracer(modules) as tracer:
        run()
    return tracer.events


def garbage(tensor: torch.Tensor, value: float) -> None:
    """What memory held before: written past torch's ops, so the tracer never sees it."""
    tensor.numpy()[...] = value


def test_memory_nothing_wrote_and_arguments_overwritten_unread_trace_alike() -> None:
    def run(value: float) -> Any:
        def step() -> None:
            mask = torch.empty(4)
            garbage(mask, value)
            mask.bernoulli_(0.5, generator=torch.Generator().manual_seed(0))
            out = torch.empty(4)
            garbage(out, value)
            torch.add(mask, 1, out=out)
            out.mul_(2)

        return step

    events = traced(run(1.0))
    assert events == traced(run(2.0))  # whatever the memory held
    ops = {event["op"]: event for event in events}
    assert ops["aten.empty.memory_format"]["out"] == [UNWRITTEN]
    assert ops["aten.bernoulli_.float"]["in"][0] == OVERWRITTEN
    assert ops["aten.bernoulli_.float"]["random"] is True
    assert ops["aten.add.out"]["in"][-1] == OVERWRITTEN
    assert "unwritten" not in ops["aten.mul_.Tensor"]  # add wrote all of it


def test_an_op_reading_memory_nothing_wrote_is_named_with_the_op_that_made_it() -> None:
    def run(value: float) -> Any:
        def step() -> None:
            buffer = torch.empty(2, 3)
            garbage(buffer, value)
            buffer[:, :2] = torch.ones(2, 2)  # column 2 holds what was there
            buffer.sum()

        return step

    ours, theirs = traced(run(1.0)), traced(run(2.0))
    found = first_difference(ours, theirs)
    assert (found.kind, found.op, found.source_op) == (
        "uninitialized",
        "aten.sum.default",
        "aten.empty.memory_format",
    )


class Twice(torch.nn.Module):
    """A model that calls its module ``block.1`` twice: inside ``block`` and on its own."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(2, 3)
        self.block = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block[1](self.block(self.first(x)))


def test_modules_are_named_by_full_path_in_forward_and_backward_and_when_called_twice() -> None:
    model = Twice()
    events = traced(lambda: model(torch.ones(1, 2)).sum().backward())
    modules = {}
    for event in events:
        modules.setdefault((event["op"], event["phase"]), []).append(event["module"])
    assert modules[("aten.addmm.default", "forward")] == ["first", "block.0"]
    assert modules[("aten.tanh.default", "forward")] == ["block.1", "block.1"]
    assert modules[("aten.tanh_backward.default", "backward")] == ["block.1", "block.1"]
    assert set(modules[("aten.mm.default", "backward")]) == {"block.0", "first"}


# ---------------------------------------------------------------- check, replayed


def test_dropout_memory_is_never_blamed_and_noise_is_named_at_the_inner_module() -> None:
    report = check_planted("noise")
    assert report.divergence is not None and report.divergence.step == 2
    where = report.localization
    assert where is not None
    assert (where.kind, where.module, where.phase) == ("input", "blocks.1.ff", "forward")
    assert "empty" not in report.render()


def test_a_read_of_torch_empty_without_a_fill_is_uninitialized_memory() -> None:
    report = check_planted("empty")
    assert report.divergence is not None and report.divergence.step == 1
    where = report.localization
    assert where is not None, report.render()
    assert (where.kind, where.module, where.op) == (
        "uninitialized",
        "blocks.1",
        "aten.sum.dim_IntList",
    )
    assert where.source_op == "aten.empty.memory_format"
    assert "read memory that no op had written" in report.render()


def test_a_generator_reseeded_from_the_clock_is_named_as_a_random_draw() -> None:
    report = check_planted("reseed")
    where = report.localization
    assert where is not None and report.divergence is not None
    assert report.divergence.step == 2
    assert (where.kind, where.random, where.module) == ("op", True, "blocks.0")
    assert "the RNG state differed" in report.render()
    assert not any("--deterministic" in cause for cause in report.causes)


def test_replays_leave_only_the_traces_the_report_names(tmp_path: Path) -> None:
    report = check_planted("noise", workdir=tmp_path)
    assert report.localization is not None
    names = sorted(path.name for path in tmp_path.iterdir())
    runs = [f"run{n}.{kind}" for n in (1, 2) for kind in ("jsonl", "stderr", "stdout")]
    assert names == sorted([*runs, "trace1.jsonl", "trace2.jsonl"])
    traces = f"op traces: {tmp_path / 'trace1.jsonl'}, {tmp_path / 'trace2.jsonl'}"
    assert traces in report.render()


def test_a_replay_that_fails_is_reported_with_the_end_of_its_stderr(tmp_path: Path) -> None:
    report = check_planted("noise", env={"STARTS_DIR": str(tmp_path), "REPLAYS": "crash"})
    assert report.verdict == "diverged" and report.localization is None
    text = report.render()
    assert "not localized (the replay of run 1 exited with status 1" in text, text
    assert "planted replay crash" in text


def test_replays_that_part_before_the_checked_runs_did_are_not_taken_for_a_localization(
    tmp_path: Path,
) -> None:
    report = check_planted("noise", env={"STARTS_DIR": str(tmp_path), "REPLAYS": "part-early"})
    assert report.divergence is not None and report.divergence.step == 2
    assert report.localization is None
    assert "the replays parted at step 1, before step 2" in report.render()


def test_the_tracer_leaves_a_scripts_own_optimizer_hooks_running(tmp_path: Path) -> None:
    script = (
        "import torch\n"
        "from torch.optim.optimizer import register_optimizer_step_post_hook\n"
        "seen = []\n"
        "register_optimizer_step_post_hook(lambda *_: seen.append(1))\n"
        "model = torch.nn.Linear(2, 1)\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for _ in range(4):\n"
        "    opt.zero_grad(); model(torch.ones(1, 2)).sum().backward(); opt.step()\n"
        "print(len(seen))\n"
    )
    trace = tmp_path / "trace.jsonl"
    result = subprocess.run(
        [PYTHON, "-m", "torchrepro", "run", "--seed", "1", "--", PYTHON, "-c", script],
        env=child_env(TORCHREPRO_TRACE=str(trace), TORCHREPRO_TRACE_STEP="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["4"]
    assert read_trace(trace)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="no transformers")
def test_noise_in_a_bert_layer_is_named_by_its_full_path_not_the_first_dropout() -> None:
    report = check_planted("", [PYTHON, str(SCRIPTS / "localize_bert.py")])
    assert report.divergence is not None and report.divergence.step == 2
    where = report.localization
    assert where is not None
    assert (where.kind, where.module) == ("input", "bert.encoder.layer.1.output.dense")


def test_on_two_gloo_ranks_check_names_the_rank_and_says_it_did_not_localize(
    tmp_path: Path,
) -> None:
    command = [*TORCHRUN, str(SCRIPTS / "ddp_mixer.py")]
    plant = {"PLANT_RANK": "1", "PLANT_STEP": "2", "OMP_NUM_THREADS": "1"}
    report = check_planted("", command, env=plant, workdir=tmp_path)
    assert report.divergence is not None and report.divergence.step == 2
    assert report.localization is None  # no answer rather than a wrong one
    assert any("not localized (the op replay of several ranks" in n for n in report.notes)
