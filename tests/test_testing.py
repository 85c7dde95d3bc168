"""assert_reproducible: real fresh processes, and the bitwise comparison behind it."""

from __future__ import annotations

import functools
import os
import random

import numpy as np
import pytest
import torch

from torchrepro import isolate_rng, seed_everything
from torchrepro.errors import TorchReproError
from torchrepro.testing import _first_difference, assert_reproducible


def draw_everything(size: int = 3) -> dict[str, object]:
    return {
        "torch": torch.randn(size),
        "numpy": np.random.rand(size),
        "python": random.random(),
        "str_set_order": list({"alpha", "beta", "gamma", "delta", "epsilon"}),
    }


def process_id_at_index_two() -> dict[str, torch.Tensor]:
    values = torch.zeros(2, 4)
    values[1, 2] = os.getpid()
    return {"same": torch.ones(3), "pid": values}


def raise_value_error() -> None:
    raise ValueError("boom in the child")


def test_assert_reproducible_returns_what_a_seeded_run_here_returns() -> None:
    result = assert_reproducible(functools.partial(draw_everything, 4), seed=11)
    with isolate_rng():
        seed_everything(11)
        expected = draw_everything(4)
    assert torch.equal(result["torch"], expected["torch"])  # type: ignore[arg-type]
    assert np.array_equal(result["numpy"], expected["numpy"])  # type: ignore[arg-type]
    assert result["python"] == expected["python"]


def test_assert_reproducible_takes_the_seed_from_torchrepro_seed_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TORCHREPRO_SEED", "11")
    by_env = assert_reproducible(draw_everything, runs=3)
    with isolate_rng():
        seed_everything(11)
        expected = draw_everything()
    assert torch.equal(by_env["torch"], expected["torch"])  # type: ignore[arg-type]


def test_assert_reproducible_names_the_output_and_element_that_first_differs() -> None:
    with pytest.raises(AssertionError) as raised:
        assert_reproducible(process_id_at_index_two, seed=3)
    message = str(raised.value)
    assert "process_id_at_index_two is not reproducible: run 2 differs from run 1" in message
    assert "result['pid'][1, 2]: " in message
    assert "(1 of 8 elements differ)" in message
    assert "seed 3" in message


def test_a_run_that_raises_is_reported_with_its_traceback() -> None:
    with pytest.raises(TorchReproError, match="2 of 2 runs of raise_value_error failed") as raised:
        assert_reproducible(raise_value_error, seed=1)
    assert "ValueError: boom in the child" in str(raised.value)


def test_a_lambda_is_refused_before_any_process_starts() -> None:
    with pytest.raises(TorchReproError, match="cannot be pickled"):
        assert_reproducible(lambda: 1)


@pytest.mark.parametrize("runs", [1, 0, True, 2.0])
def test_fewer_than_two_runs_or_a_non_int_is_refused(runs: object) -> None:
    with pytest.raises(TorchReproError, match="runs must be an int of at least 2"):
        assert_reproducible(draw_everything, runs=runs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("first", "other", "expected"),
    [
        pytest.param(0.0, -0.0, "result: 0.0 vs -0.0", id="negative zero differs"),
        pytest.param(float("nan"), float("nan"), None, id="same nan is equal"),
        pytest.param(1, 1.0, "result: type int vs float", id="int is not float"),
        pytest.param(
            torch.zeros(2), torch.zeros(2, dtype=torch.float64), "result: dtype", id="dtype"
        ),
        pytest.param(torch.zeros(2), torch.zeros(3), "result: shape (2,) vs (3,)", id="shape"),
        pytest.param(
            torch.tensor([1.0, 2.0], dtype=torch.bfloat16),
            torch.tensor([1.0, 3.0], dtype=torch.bfloat16),
            "result[1]: ",
            id="bfloat16 by its bits",
        ),
        pytest.param(torch.tensor(float("nan")), torch.tensor(float("nan")), None, id="nan tensor"),
        pytest.param(
            {"a": [np.zeros(2), np.array([[1, 2], [3, 4]])]},
            {"a": [np.zeros(2), np.array([[1, 2], [3, 5]])]},
            "result['a'][1][1, 1]: 4 vs 5 (1 of 4 elements differ)",
            id="nested path",
        ),
        pytest.param({"a": 1, "b": 2}, {"b": 2, "a": 1}, "result: keys", id="key order"),
        pytest.param(("x", b"y", None), ("x", b"y", None), None, id="plain values equal"),
    ],
)
def test_results_are_compared_bitwise_and_the_first_difference_named(
    first: object, other: object, expected: str | None
) -> None:
    found = _first_difference(first, other, "result")
    if expected is None:
        assert found is None
    else:
        assert found is not None and found.startswith(expected)


def test_an_object_that_cannot_be_compared_bitwise_is_refused() -> None:
    with pytest.raises(TorchReproError, match="cannot compare a object at result\\[0\\]"):
        _first_difference([object()], [object()], "result")
