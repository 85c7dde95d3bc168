"""Tests for torchrepro.detops: each replacement against PyTorch's CPU kernels, and the
patch life cycle. All run on a CPU."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F
import torch.utils.deterministic
from torch import nn

from torchrepro import detops
from torchrepro.errors import DeterminismError, ReplacementError

NATIVE_INTERPOLATE = F.interpolate
NATIVE_TENSOR_CUMSUM = torch.Tensor.cumsum


@pytest.fixture(autouse=True)
def _restore_flags() -> Iterator[None]:
    flags = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,  # type: ignore[attr-defined]
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(1234)
    yield
    detops.unpatch_nondeterministic_ops()
    torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
    torch.utils.deterministic.fill_uninitialized_memory = flags[2]  # type: ignore[attr-defined]
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[3], flags[4]
    torch.random.set_rng_state(state)


class Case(NamedTuple):
    name: str
    replacement: Callable[..., torch.Tensor]
    native: Callable[..., torch.Tensor]
    shape: tuple[int, ...]
    kwargs: dict[str, Any]


CASES = [
    Case(
        "adaptive1d",
        detops.adaptive_avg_pool1d,
        F.adaptive_avg_pool1d,
        (2, 3, 11),
        {"output_size": 4},
    ),
    Case(
        "adaptive2d",
        detops.adaptive_avg_pool2d,
        F.adaptive_avg_pool2d,
        (2, 3, 9, 7),
        {"output_size": (4, 5)},
    ),
    Case(
        "adaptive2d_none",
        detops.adaptive_avg_pool2d,
        F.adaptive_avg_pool2d,
        (3, 9, 7),
        {"output_size": (None, 3)},
    ),
    Case(
        "adaptive3d",
        detops.adaptive_avg_pool3d,
        F.adaptive_avg_pool3d,
        (1, 2, 5, 6, 7),
        {"output_size": (2, 3, 4)},
    ),
    Case(
        "avg1d",
        detops.avg_pool1d,
        F.avg_pool1d,
        (2, 3, 10),
        {"kernel_size": 3, "stride": 2, "padding": 1},
    ),
    Case(
        "avg2d_ceil_nopad",
        detops.avg_pool2d,
        F.avg_pool2d,
        (2, 2, 9, 8),
        {
            "kernel_size": 3,
            "stride": 2,
            "padding": 1,
            "ceil_mode": True,
            "count_include_pad": False,
        },
    ),
    Case(
        "avg2d_divisor",
        detops.avg_pool2d,
        F.avg_pool2d,
        (2, 2, 8, 8),
        {"kernel_size": (2, 3), "divisor_override": 5},
    ),
    Case(
        "avg3d",
        detops.avg_pool3d,
        F.avg_pool3d,
        (1, 2, 5, 6, 7),
        {"kernel_size": 3, "stride": (1, 2, 2), "padding": 1, "ceil_mode": True},
    ),
    Case(
        "nearest",
        detops.interpolate,
        F.interpolate,
        (2, 2, 5, 7),
        {"scale_factor": 1.7, "mode": "nearest"},
    ),
    Case(
        "nearest_exact",
        detops.interpolate,
        F.interpolate,
        (2, 2, 5, 7),
        {"size": (9, 4), "mode": "nearest-exact"},
    ),
    Case(
        "linear",
        detops.interpolate,
        F.interpolate,
        (2, 3, 6),
        {"scale_factor": 2.5, "mode": "linear"},
    ),
    Case(
        "bilinear",
        detops.interpolate,
        F.interpolate,
        (2, 2, 5, 7),
        {"size": (11, 4), "mode": "bilinear"},
    ),
    Case(
        "bilinear_corners",
        detops.interpolate,
        F.interpolate,
        (2, 2, 5, 7),
        {"scale_factor": (2.0, 1.5), "mode": "bilinear", "align_corners": True},
    ),
    Case(
        "bicubic",
        detops.interpolate,
        F.interpolate,
        (1, 2, 6, 5),
        {"scale_factor": 1.6, "mode": "bicubic"},
    ),
    Case(
        "bicubic_recompute",
        detops.interpolate,
        F.interpolate,
        (1, 2, 6, 5),
        {"scale_factor": 0.7, "mode": "bicubic", "recompute_scale_factor": True},
    ),
    Case(
        "trilinear",
        detops.interpolate,
        F.interpolate,
        (1, 2, 3, 4, 5),
        {"size": (5, 3, 7), "mode": "trilinear"},
    ),
    Case("area", detops.interpolate, F.interpolate, (2, 2, 9, 7), {"size": (4, 3), "mode": "area"}),
    Case("reflect", detops.pad, F.pad, (2, 3, 6, 5), {"pad": (2, 1, 3, 0), "mode": "reflect"}),
    Case("replicate", detops.pad, F.pad, (2, 3, 6), {"pad": (2, 4), "mode": "replicate"}),
    Case(
        "circular",
        detops.pad,
        F.pad,
        (1, 2, 3, 4, 5),
        {"pad": (1, 2, 2, 0, 1, 1), "mode": "circular"},
    ),
    Case("cumsum", detops.cumsum, torch.cumsum, (3, 200), {"dim": 1}),
    Case("cumsum_dim0", detops.cumsum, torch.cumsum, (5, 4), {"dim": 0}),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_replacement_forward_and_gradient_equal_pytorch(case: Case) -> None:
    x = torch.randn(case.shape, dtype=torch.float64, requires_grad=True)
    ours = case.replacement(x, **case.kwargs)
    theirs = case.native(x, **case.kwargs)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(theirs)
    (g_ours,) = torch.autograd.grad(ours, x, grad)
    (g_theirs,) = torch.autograd.grad(theirs, x, grad)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES[::3], ids=[c.name for c in CASES[::3]])
def test_replacement_passes_gradcheck(case: Case) -> None:
    x = torch.randn(case.shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: case.replacement(t, **case.kwargs), (x,))


def test_float32_replacements_agree_with_pytorch_to_float_rounding() -> None:
    x = torch.randn(4, 8, 24, 24)
    torch.testing.assert_close(
        detops.adaptive_avg_pool2d(x, 5), F.adaptive_avg_pool2d(x, 5), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        detops.interpolate(x, scale_factor=2, mode="bilinear"),
        F.interpolate(x, scale_factor=2, mode="bilinear"),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_loss_and_cross_entropy_equal_pytorch(reduction: str, weighted: bool) -> None:
    logits = torch.randn(4, 5, 3, 2, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 5, (4, 3, 2))
    target[0, 0, 0] = -100
    weight = torch.rand(5, dtype=torch.float64) if weighted else None
    for ours_fn, native_fn, kwargs in [
        (detops.nll_loss, F.nll_loss, {}),
        (detops.cross_entropy, F.cross_entropy, {}),
        (detops.cross_entropy, F.cross_entropy, {"label_smoothing": 0.2}),
    ]:
        ours = ours_fn(logits, target, weight, reduction=reduction, **kwargs)
        theirs = native_fn(logits, target, weight, reduction=reduction, **kwargs)
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
        g = torch.randn_like(theirs)
        torch.testing.assert_close(
            torch.autograd.grad(ours, logits, g)[0], torch.autograd.grad(theirs, logits, g)[0]
        )


def test_nll_loss_on_class_vectors_and_one_sample() -> None:
    logp = torch.log_softmax(torch.randn(6, 4, dtype=torch.float64), 1)
    target = torch.tensor([0, 3, 1, 1, 2, 0])
    torch.testing.assert_close(detops.nll_loss(logp, target), F.nll_loss(logp, target))
    torch.testing.assert_close(
        detops.nll_loss(logp[0], target[0], reduction="none"),
        F.nll_loss(logp[0], target[0], reduction="none"),
    )


def test_nll_loss_rejects_a_target_out_of_range() -> None:
    with pytest.raises(ReplacementError, match="targets must lie in"):
        detops.nll_loss(torch.zeros(2, 3), torch.tensor([0, 3]))


def test_bincount_and_histc_equal_pytorch() -> None:
    values = torch.randint(0, 20, (500,))
    weights = torch.rand(500, dtype=torch.float64)
    assert torch.equal(detops.bincount(values), torch.bincount(values))
    assert torch.equal(detops.bincount(values, minlength=30), torch.bincount(values, minlength=30))
    torch.testing.assert_close(
        detops.bincount(values, weights), torch.bincount(values, weights), rtol=1e-12, atol=0
    )
    assert detops.bincount(values, weights.float()).dtype == torch.float32
    assert detops.bincount(torch.tensor([], dtype=torch.int64)).shape == (0,)
    x = torch.randn(5000)
    for args in [(37,), (10, -1.0, 1.0), (4, 2.0, 2.0)]:
        assert torch.equal(detops.histc(x, *args), torch.histc(x, *args)), args


def test_bincount_rejects_negative_values() -> None:
    with pytest.raises(ReplacementError, match="non-negative"):
        detops.bincount(torch.tensor([1, -1]))


@pytest.mark.parametrize("reduce", ["sum", "mean", "prod"])
@pytest.mark.parametrize("include_self", [True, False])
def test_scatter_reduce_equals_pytorch(reduce: str, include_self: bool) -> None:
    base = torch.rand(4, 6, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 4, (3, 6))
    # PyTorch's own backward rejects src larger than index, so the shapes match here.
    src = (torch.rand(3, 6, dtype=torch.float64) + 0.5).requires_grad_()
    ours = detops.scatter_reduce(base, 0, index, src, reduce, include_self=include_self)
    theirs = base.scatter_reduce(0, index, src, reduce, include_self=include_self)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(theirs)
    for a, b in zip(
        torch.autograd.grad(ours, (base, src), g), torch.autograd.grad(theirs, (base, src), g)
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_scatter_reduce_prod_along_last_dim_handles_zeros_and_a_larger_src() -> None:
    base = torch.ones(3, 5, dtype=torch.float64)
    index = torch.randint(0, 5, (3, 8))
    src = torch.randn(4, 9, dtype=torch.float64)
    src[1, 2] = 0.0
    torch.testing.assert_close(
        detops.scatter_reduce(base, 1, index, src, "prod"),
        base.scatter_reduce(1, index, src, "prod"),
    )


def test_unsupported_arguments_raise_with_the_fix() -> None:
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(ReplacementError, match="antialias"):
        detops.interpolate(x, scale_factor=2, mode="bilinear", antialias=True)
    with pytest.raises(ReplacementError, match="deterministic already"):
        detops.scatter_reduce(x, 0, torch.zeros_like(x, dtype=torch.int64), x, "amax")
    with pytest.raises(ReplacementError, match="smaller than the input"):
        detops.pad(x, (4, 0), mode="reflect")


def test_patch_is_idempotent_and_unpatch_restores_the_exact_originals() -> None:
    names = detops.patch_nondeterministic_ops()
    assert "torch.nn.functional.adaptive_avg_pool2d" in names
    assert "torch.Tensor.cumsum" in names
    assert F.interpolate is not NATIVE_INTERPOLATE
    assert detops.patch_nondeterministic_ops() == names
    assert detops.unpatch_nondeterministic_ops() == names
    assert F.interpolate is NATIVE_INTERPOLATE
    assert "cumsum" not in torch.Tensor.__dict__
    assert torch.Tensor.cumsum is NATIVE_TENSOR_CUMSUM
    assert detops.unpatch_nondeterministic_ops() == []


def test_context_manager_nests_and_restores_what_it_found() -> None:
    with detops.deterministic_ops() as names:
        assert detops.patched_ops() == names
        with detops.deterministic_ops(force=True):
            assert detops.forced()
        assert detops.patched_ops() == names
        assert not detops.forced()
    assert detops.patched_ops() == []
    assert F.interpolate is NATIVE_INTERPOLATE


def test_unpatch_refuses_to_drop_a_later_patch() -> None:
    detops.patch_nondeterministic_ops()
    ours = F.pad
    F.pad = lambda *a, **k: ours(*a, **k)  # someone wraps over torchrepro
    try:
        with pytest.raises(DeterminismError, match="replaced after torchrepro"):
            detops.unpatch_nondeterministic_ops()
        assert detops.patched_ops()
    finally:
        F.pad = ours


def test_patched_entry_points_call_native_ops_on_cpu_unless_forced() -> None:
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    torch.use_deterministic_algorithms(True)
    with detops.deterministic_ops():
        native = nn.AdaptiveAvgPool2d(3)(x)  # CPU kernels are deterministic: no detour
    with detops.deterministic_ops(force=True):
        replaced = nn.AdaptiveAvgPool2d(3)(x)
    assert type(native.grad_fn).__name__.startswith("AdaptiveAvgPool2D")
    assert not type(replaced.grad_fn).__name__.startswith("AdaptiveAvgPool2D")
    torch.testing.assert_close(replaced, native)


class EveryOp(nn.Module):
    """A model that reaches every replaced op through ordinary PyTorch calls."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
        self.pad = nn.ReplicationPad2d(1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear")
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.avg = nn.AvgPool3d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pad(self.conv(x))
        h = self.up(h) + F.interpolate(h, scale_factor=2, mode="bicubic")
        h = F.interpolate(h, size=(16, 16), mode="nearest") + F.avg_pool2d(
            F.interpolate(h, scale_factor=2, mode="nearest"), 2
        )
        h = h + self.avg(h.unsqueeze(1).repeat(1, 2, 1, 1, 1)).mean() + torch.cumsum(h, 3)
        h = h + F.adaptive_avg_pool1d(h.flatten(2), 256).view_as(h).cumsum(2)
        h = F.interpolate(h.flatten(2), scale_factor=0.5, mode="linear").mean() + h
        h = h + F.interpolate(h.unsqueeze(2), size=(2, 6, 6), mode="trilinear").mean()
        h = h + F.adaptive_avg_pool3d(h.unsqueeze(1), 2).mean()
        return self.pool(h)


def test_model_with_every_replaced_op_trains_in_strict_deterministic_mode() -> None:
    model = EveryOp().double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    target = torch.randint(0, 4, (2, 3, 3))
    target[0, 0, 0] = -100
    reference = F.cross_entropy(model(x), target, label_smoothing=0.1)
    (g_ref,) = torch.autograd.grad(reference, model.conv.weight)
    torch.use_deterministic_algorithms(True)
    with detops.deterministic_ops(force=True):
        out = model(x)
        loss = (
            F.cross_entropy(out, target, label_smoothing=0.1)
            + F.nll_loss(torch.log_softmax(out, 1), target) * 0
        )
        (g,) = torch.autograd.grad(loss, model.conv.weight)
        values = (out.detach().flatten().abs() * 10).long()
        counts = torch.bincount(values, out.detach().flatten())
        hist = out.detach().histc(bins=7)
        flat = out.detach().flatten()
        scattered = torch.ones(4, dtype=torch.float64).scatter_reduce(0, values % 4, flat, "prod")
    torch.testing.assert_close(loss, reference, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(counts, torch.bincount(values, out.detach().flatten()))
    assert torch.equal(hist, out.detach().histc(bins=7))
    torch.testing.assert_close(
        scattered, torch.ones(4, dtype=torch.float64).scatter_reduce(0, values % 4, flat, "prod")
    )


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_weighted_nll_loss_leaves_out_targets_equal_to_ignore_index(reduction: str) -> None:
    logits = torch.randn(6, 4, 3, 3, dtype=torch.float64).log_softmax(1)
    target = torch.randint(0, 4, (6, 3, 3))
    weight = torch.rand(4, dtype=torch.float64) + 0.5
    ours = detops.nll_loss(logits, target, weight, ignore_index=0, reduction=reduction)
    theirs = F.nll_loss(logits, target, weight, ignore_index=0, reduction=reduction)
    torch.testing.assert_close(ours, theirs)


def test_replacements_first_used_in_inference_mode_still_train() -> None:
    x = torch.randn(2, 3, 10, 10)
    with torch.inference_mode():
        detops.adaptive_avg_pool2d(x, 3)  # builds and caches the pooling matrices
    grad_input = x.clone().requires_grad_()
    detops.adaptive_avg_pool2d(grad_input, 3).sum().backward()
    assert grad_input.grad is not None


def test_isolation_restores_whether_the_patch_was_forced() -> None:
    from torchrepro import isolate_rng

    detops.patch_nondeterministic_ops()
    with isolate_rng():
        detops.patch_nondeterministic_ops(force=True)
    assert not detops.forced()
