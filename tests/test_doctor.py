"""Tests for torchrepro.doctor: the probe harness in real fresh processes, the report and the
recommendation, and `torchrepro doctor` as a user runs it. On a CPU every built-in probe
repeats; planted probes (tests/scripts/doctor_probes.py) stand for ops that do not."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.conftest import PYTHON, SCRIPTS, child_env

from torchrepro import detops
from torchrepro._levels import LEVELS, Flags, Level
from torchrepro.doctor import PROBES, run_doctor
from torchrepro.doctor._measure import measure
from torchrepro.doctor.probes import select_probes
from torchrepro.doctor.report import recommend
from torchrepro.errors import DoctorError

PLANTED = ["planted same", "planted per process", "planted per call", "planted strict"]
FIELDS = {"probe", "level", "available", "raised", "error", "within", "across", "ms", "served"}


def doctor(*args: str, cwd: Path = SCRIPTS, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "torchrepro", "doctor", *args],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def by_key(entries: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["probe"], e["level"]): e for e in entries}


@pytest.fixture(scope="module")
def quick_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = tmp_path_factory.mktemp("doctor") / "report.json"
    done = doctor("--device", "cpu", "--quick", "--json", str(out))
    return done, json.loads(out.read_text()) if out.exists() else {}


def test_doctor_on_a_cpu_prints_the_table_and_finds_every_probe_repeatable(
    quick_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    done, report = quick_run
    assert done.returncode == 0, done.stdout + done.stderr
    text = done.stdout
    assert text.startswith("torchrepro doctor: cpu, quick,")
    for heading in ("environment", "determinism setting", "probe ", "self-test"):
        assert heading in text
    assert "recommendation: defaults: repeatable bitwise for all" in text
    # One entry per probe x level, each with every field.
    assert len(report["entries"]) == len(PROBES) * len(LEVELS)
    assert {(e["probe"], e["level"]) for e in report["entries"]} == {
        (p.name, level.name) for p in PROBES for level in LEVELS
    }
    available = [e for e in report["entries"] if e["available"]]
    assert all(FIELDS <= set(e) for e in available)
    assert all(e["within"] and e["across"] and not e["raised"] for e in available)
    assert all(e["ms"] > 0 for e in available)
    # What a CPU cannot run is named, not counted as repeatable.
    missing = {e["probe"] for e in report["entries"] if not e["available"]}
    assert "matmul tf32" in missing and "sdpa math" not in missing
    assert [t["ok"] for t in report["self_test"]] == [True, True, True, True]
    assert report["recommendation"]["level"] == "defaults"
    assert report["recommendation"]["all_pass"] is True
    assert report["environment"]["torch"] == torch.__version__


def test_a_planted_op_with_noise_per_process_is_not_repeatable_across_processes(
    tmp_path: Path,
) -> None:
    # Through the command, with the probes loaded from the working directory.
    out = tmp_path / "planted.json"
    only = [arg for name in PLANTED for arg in ("--only", name)]
    done = doctor(
        "--device", "cpu", "--quick", "--no-self-test", "--probe", "doctor_probes:probes",
        *only, "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr  # a finding
    report = json.loads(out.read_text())
    entries = by_key(report["entries"])
    for level in LEVELS:
        same = entries[("planted same", level.name)]
        assert (same["within"], same["across"]) == (True, True)
        per_process = entries[("planted per process", level.name)]
        assert (per_process["within"], per_process["across"]) == (True, False)
        assert entries[("planted per call", level.name)]["within"] is False
    for level in ("defaults", "recipe"):
        assert entries[("planted strict", level)]["raised"] is False
    for level in ("strict", "torchrepro"):
        assert entries[("planted strict", level)]["raised"] is True
        assert "planted_op" in entries[("planted strict", level)]["error"]
    rec = report["recommendation"]
    assert not rec["all_pass"] and rec["level"] == "defaults"
    assert dict(map(tuple, rec["failing"])) == {
        "planted per process": "differs across processes",
        "planted per call": "differs within a process",
    }
    text = done.stdout
    assert "NO: procs" in text and "NO: calls" in text and "raises" in text
    assert "no level made" in text


def test_a_time_limit_marks_what_it_stopped_as_not_measured_never_as_repeatable() -> None:
    report = run_doctor("cpu", quick=True, only=["cumsum"], self_test=False, time_limit=0.3)
    assert all(e.get("within") is None and e.get("across") is None for e in report.entries)
    assert any("time limit" in note for note in report.notes)
    assert not report.recommendation.all_pass
    assert report.exit_code == 1
    assert "?" in report.render()


def test_with_a_model_only_the_probes_of_the_ops_its_step_runs_are_run() -> None:
    report = run_doctor(
        "cpu",
        quick=True,
        only=["conv2d", "index_add_", "ctc_loss", "histc"],
        model="torchrepro._cost_workload:example_workload",
        self_test=False,
    )
    assert report.model is not None
    assert report.recommendation.probes == ("conv2d", "index_add_")
    assert {e["probe"] for e in report.entries} == {"conv2d", "index_add_"}
    assert ["convolution", "float32"] in report.model["ops"]
    assert report.recommendation.cost_basis == "the model's training step"
    assert report.recommendation.cost is not None and report.recommendation.cost > 0
    assert "the 2 probes torchrepro._cost_workload:example_workload uses" in report.render()


def test_measure_names_the_replacement_that_served_an_op_and_puts_the_flags_back() -> None:
    forced = Level("forced", "replacements everywhere", Flags(*[False] * 4, True, True, True))
    before = Flags.capture()
    [probe] = select_probes(["cumsum"])
    [plain, replaced] = measure(
        probe, torch.device("cpu"), [LEVELS[0], forced], repeats=1, quick=True
    )
    assert plain["served"] == [] and replaced["served"] == ["cumsum"]
    assert plain["within"] is True and replaced["within"] is True
    assert Flags.capture() == before and detops.patched_ops() == []


def entry(probe: str, level: str, **fields: Any) -> dict[str, Any]:
    ok = {"available": True, "raised": False, "within": True, "across": True, "ms": 1.0}
    return {"probe": probe, "level": level, **ok, **fields}


def test_recommend_takes_the_cheapest_level_under_which_every_probe_passed() -> None:
    levels = [level.name for level in LEVELS]
    entries = [
        entry("index_add_", "defaults", across=False),
        entry("index_add_", "recipe", across=False),
        entry("index_add_", "strict", raised=True, within=None, across=None),
        entry("index_add_", "torchrepro", ms=2.0, served=["index_add"]),
        *(entry("conv2d", level) for level in levels),
    ]
    rec = recommend(entries, levels)
    assert (rec.level, rec.all_pass, rec.failing) == ("torchrepro", True, ())
    assert rec.cost == pytest.approx(1.5)  # (2 + 1) / (1 + 1)
    only_conv = recommend(entries, levels, relevant=["conv2d"])
    assert (only_conv.level, only_conv.probes) == ("defaults", ("conv2d",))


def test_recommend_never_counts_an_unmeasured_comparison_as_a_pass() -> None:
    levels = [level.name for level in LEVELS]
    entries = [entry("cumsum", level, across=None) for level in levels]
    rec = recommend(entries, levels)
    assert not rec.all_pass and rec.failing == (("cumsum", "not measured"),)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"only": ["no such op"]}, "no probe is called 'no such op'"),
        ({"probes": ["nomodule"]}, "a probe spec is 'module:function'"),
        ({"probes": ["no_such_module_here:probes"]}, "cannot load no_such_module_here:probes"),
        ({"model": "train"}, "--model is 'module:function'"),
        ({"time_limit": 0}, "time_limit must be a number of seconds > 0"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(DoctorError, match=message):
        run_doctor("cpu", **kwargs)


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without CUDA"
)
def test_asking_for_cuda_without_a_gpu_says_so_with_exit_2() -> None:
    done = doctor("--device", "cuda", "--quick")
    assert done.returncode == 2
    assert "this machine has no such device" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_doctor_on_cuda_passes_its_self_tests(tmp_path: Path) -> None:
    out = tmp_path / "cuda.json"
    done = doctor("--device", "cuda", "--quick", "--json", str(out), timeout=300)
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(out.read_text())
    assert all(t["ok"] for t in report["self_test"]), report["self_test"]
    assert len(report["entries"]) == len(PROBES) * len(LEVELS)
