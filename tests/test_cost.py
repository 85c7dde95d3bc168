"""Tests for torchrepro.cost: the report of what each determinism setting costs a model.
All run on a CPU; the GPU test is skipped without CUDA. The shared conftest restores the
determinism flags and the patch state after each test."""

from __future__ import annotations

import pytest
import torch
import torch.utils.deterministic
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


def test_cost_report_records_a_setting_that_raises_and_a_step_that_does_not_repeat() -> None:
    class Flaky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 1)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if torch.are_deterministic_algorithms_enabled() and not detops.patched_ops():
                raise RuntimeError("fake_backward_cuda does not have a deterministic kernel")
            return self.lin(x) * (1 + 1e-3 * self.calls)  # differs between runs

    detops.patch_nondeterministic_ops()
    report = cost.determinism_cost(Flaky(), torch.randn(4, 3), lambda out: out.sum(), steps=2)
    strict = report.settings[2]
    assert strict.error is not None and "deterministic kernel" in strict.error
    assert strict.repeatable is None and strict.ratio is None
    assert report.needed is None
    assert "raised RuntimeError" in report.render()
    assert detops.patched_ops()  # the patch the caller installed is back


def test_cost_spec_must_name_module_and_function() -> None:
    with pytest.raises(DeterminismError, match="module:function"):
        cost.cost_from_spec("no_colon_here")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_field_model_repeats_bitwise_on_cuda_under_torchrepro_mode() -> None:
    model, batch, loss_fn = cost.example_workload("cuda")
    report = cost.determinism_cost(model, batch, loss_fn, steps=3)
    by_name = {s.name: s for s in report.settings}
    assert by_name["torchrepro"].error is None
    assert by_name["torchrepro"].repeatable
