from __future__ import annotations

import os
import subprocess

import pytest
import torch

import torchrepro
from conftest import PYTHON, child_env
from torchrepro import determinism_status, deterministic, enable_determinism
from torchrepro.cli import main
from torchrepro.errors import DeterminismError


def test_enable_determinism_switches_everything_on_but_the_nan_fill() -> None:
    enable_determinism()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    assert not torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    assert "CUDA_LAUNCH_BLOCKING" not in os.environ


def test_warn_mode_only_warns() -> None:
    enable_determinism("warn")
    assert torch.is_deterministic_algorithms_warn_only_enabled()


def test_the_nan_fill_stays_on_when_asked_for() -> None:
    enable_determinism(fill_uninitialized_memory=True)
    assert torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]


def test_cublas_workspace_is_set_only_where_this_torch_build_uses_cublas() -> None:
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    enable_determinism()
    # A CUDA build has CUDA compiled in and is not a ROCm (HIP) build, which uses hipBLAS.
    uses_cublas = torch.backends.cuda.is_built() and torch.version.hip is None
    expected = ":4096:8" if uses_cublas else None  # the value NVIDIA documents for cuBLAS
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == expected


@pytest.mark.parametrize(
    ("cuda", "hip", "expected"),
    [("12.8", None, ":4096:8"), (None, "6.4", None), (None, None, None)],
    ids=["cuda-build", "rocm-build", "cpu-build"],
)
def test_cublas_workspace_follows_the_build_torch_reports(
    monkeypatch: pytest.MonkeyPatch, cuda: str | None, hip: str | None, expected: str | None
) -> None:
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(torch.version, "hip", hip)
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    enable_determinism(replace_ops=False)
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == expected
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"  # a value the user chose is kept
    enable_determinism(replace_ops=False)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_deterministic_block_restores_flags_and_environment_even_on_error() -> None:
    torch.backends.cudnn.benchmark = True
    os.environ.pop("FLASH_ATTENTION_DETERMINISTIC", None)
    with pytest.raises(ZeroDivisionError), deterministic():
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["FLASH_ATTENTION_DETERMINISTIC"] == "1"
        1 / 0  # noqa: B018
    assert torch.backends.cudnn.benchmark
    assert not torch.are_deterministic_algorithms_enabled()
    assert "FLASH_ATTENTION_DETERMINISTIC" not in os.environ
    assert torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", ["strict", 1, None, False])
def test_bad_modes_are_refused(mode: object) -> None:
    with pytest.raises(DeterminismError):
        enable_determinism(mode)  # type: ignore[arg-type]


def test_status_reports_what_is_still_uncontrolled() -> None:
    torch.backends.cudnn.benchmark = True
    status = determinism_status()
    assert status.cudnn_benchmark
    assert any("benchmark" in item for item in status.uncontrolled)
    assert any("deterministic algorithms are off" in item for item in status.uncontrolled)
    enable_determinism()
    status = determinism_status()
    assert not any("benchmark" in item for item in status.uncontrolled)
    assert status.as_dict()["num_threads"] == torch.get_num_threads()
    assert "uncontrolled:" in str(status)


def test_status_tells_whether_str_hashing_is_salted() -> None:
    script = "import torchrepro; print(torchrepro.determinism_status().string_hashing_randomized)"

    def salted(**env: str) -> str:
        out = subprocess.run(
            [PYTHON, "-c", script], env=child_env(**env), capture_output=True, text=True, check=True
        )
        return out.stdout.strip()

    assert salted() == "True"
    assert salted(PYTHONHASHSEED="3") == "False"


def test_seed_everything_warns_once_about_salted_hashing() -> None:
    script = "import torchrepro; torchrepro.seed_everything(1); torchrepro.seed_everything(2)"
    out = subprocess.run(
        [PYTHON, "-c", script], env=child_env(), capture_output=True, text=True, check=True
    )
    assert out.stderr.count("str hashing is salted") == 1
    assert "torchrepro run" in out.stderr


def test_isolation_also_covers_the_determinism_switches() -> None:
    with torchrepro.isolate_rng():
        enable_determinism()
    assert not torch.are_deterministic_algorithms_enabled()


def test_determinism_routes_ops_without_deterministic_kernels_and_the_block_undoes_it() -> None:
    interpolate = torch.nn.functional.interpolate
    with deterministic():
        assert torch.nn.functional.interpolate is not interpolate
        assert determinism_status().replaced_ops
    assert torch.nn.functional.interpolate is interpolate
    with deterministic(replace_ops=False):
        assert torch.nn.functional.interpolate is interpolate


def test_cost_verb_prints_the_report_for_the_built_in_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["cost", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "defaults" in out and "torchrepro" in out


def test_bad_arguments_are_refused_before_any_flag_changes() -> None:
    before = torch.are_deterministic_algorithms_enabled()
    with pytest.raises(DeterminismError, match="fill_uninitialized_memory must be True or False"):
        enable_determinism(fill_uninitialized_memory="yes")  # type: ignore[arg-type]
    with pytest.raises(DeterminismError, match="replace_ops must be True or False"):
        enable_determinism(replace_ops="no")  # type: ignore[arg-type]
    assert torch.are_deterministic_algorithms_enabled() == before


def test_enable_determinism_false_says_what_to_do_instead() -> None:
    with pytest.raises(DeterminismError, match="do not call it") as error:
        enable_determinism(False)
    assert "torchrepro.deterministic()" in str(error.value)


def test_patching_takes_a_bool_force_only() -> None:
    from torchrepro.detops import patch_nondeterministic_ops
    from torchrepro.errors import ReplacementError

    with pytest.raises(ReplacementError, match="force must be True or False; got 'x'"):
        patch_nondeterministic_ops(force="x")  # type: ignore[arg-type]
