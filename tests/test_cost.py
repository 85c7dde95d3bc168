"""Tests for torchrepro.cost: the report of what each determinism setting costs a model.
All run on a CPU; the GPU test is skipped without CUDA. The shared conftest restores the
determinism flags and the patch state after each test."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
import torch.utils.deterministic
from tests.conftest import PYTHON, child_env
from torch import nn

from torchrepro import cost, detops
from torchrepro.errors import DeterminismError


def test_cost_report_measures_every_setting_and_restores_flags() -> None:
    model, batch, loss_fn = cost.example_workload(batch_size=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    report = cost.determinism_cost(model, batch, loss_fn, steps=1)
    assert [s.name for s in report.settings] == ["defaults", "recipe", "strict", "torchrepro"]
    assert all(s.repeatable and s.error is None for s in report.settings)  # CPU kernels
    assert report.needed == "defaults"
    assert report.settings[0].ratio == pytest.approx(1.0)
    text = report.render()
    assert "needs: defaults" in text and "torchrepro" in text
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    assert not torch.backends.cudnn.deterministic
    assert detops.patched_ops() == []
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


class UnpoolWithNoise(nn.Module):
    """Max unpooling, which PyTorch's strict mode refuses on any device (torchrepro has no
    replacement for it), and noise from a generator of the model's own, which
    determinism_cost does not reseed, so that no two runs repeat."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.pool = nn.MaxPool1d(2, return_indices=True)
        self.unpool = nn.MaxUnpool1d(2)
        self.noise = torch.Generator().manual_seed(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled, indices = self.pool(self.lin(x).unsqueeze(1))
        h = self.unpool(pooled, indices).squeeze(1)
        return h * (1 + 1e-3 * torch.rand((), generator=self.noise))


def test_cost_report_records_strict_modes_own_error_and_a_step_that_does_not_repeat() -> None:
    detops.patch_nondeterministic_ops(force=True)  # the caller's own patch, to be given back
    report = cost.determinism_cost(
        UnpoolWithNoise(), torch.randn(4, 4), lambda out: out.sum(), steps=2
    )
    by_name = {s.name: s for s in report.settings}
    # use_deterministic_algorithms(True) is really on in these two: PyTorch's own error.
    for name in ("strict", "torchrepro"):
        setting = by_name[name]
        assert setting.error is not None
        assert setting.error.startswith("RuntimeError: max_unpooling"), setting.error
        assert "does not have a deterministic implementation" in setting.error
        assert setting.seconds_per_step is None and setting.ratio is None
        assert setting.repeatable is None
    for name in ("defaults", "recipe"):
        setting = by_name[name]
        assert setting.error is None and setting.seconds_per_step is not None
        assert setting.repeatable is False
    assert report.needed is None
    text = report.render()
    assert "raised RuntimeError: max_unpooling" in text
    assert "needs: no setting repeated bitwise" in text
    assert detops.patched_ops() and detops.forced()  # the caller's patch is back, as it was
    assert not torch.are_deterministic_algorithms_enabled()


def test_cost_spec_must_name_module_and_function() -> None:
    with pytest.raises(DeterminismError, match="module:function"):
        cost.cost_from_spec("no_colon_here")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_field_model_raises_in_strict_mode_and_repeats_under_torchrepro_on_cuda() -> None:
    model, batch, loss_fn = cost.example_workload("cuda")
    report = cost.determinism_cost(model, batch, loss_fn, steps=3)
    by_name = {s.name: s for s in report.settings}
    # Adaptive pooling, bilinear upsampling and reflection padding have no deterministic
    # CUDA backward: PyTorch's strict mode raises, the replacements let the same step run.
    assert by_name["strict"].error is not None
    assert "does not have a deterministic implementation" in by_name["strict"].error
    assert by_name["torchrepro"].error is None
    assert by_name["torchrepro"].repeatable


WORKLOAD = """
import torch
from torch import nn


def workload():
    model = nn.Linear(4, 2)
    return model, (torch.randn(8, 4), torch.randint(0, 2, (8,))), nn.functional.cross_entropy
"""


def test_cost_finds_a_workload_in_the_working_directory_and_prints_only_its_report(
    tmp_path: Path,
) -> None:
    (tmp_path / "mywork.py").write_text(WORKLOAD)
    done = subprocess.run(
        [PYTHON, "-m", "torchrepro", "cost", "mywork:workload", "--steps", "1"],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "speed is steps per second relative to defaults (higher is faster)" in done.stdout
    assert done.stderr == ""  # the profiler's own log lines do not leak


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cost_on_cuda_without_a_gpu_is_a_usage_error_not_a_traceback() -> None:
    done = subprocess.run(
        [PYTHON, "-m", "torchrepro", "cost", "--device", "cuda"],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "this machine has no CUDA device" in done.stderr
    assert "Traceback" not in done.stderr
