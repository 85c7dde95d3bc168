from __future__ import annotations

import os
import random
import subprocess

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import torchrepro
from conftest import PYTHON, SCRIPTS, child_env
from torchrepro import derive_seed, seed_everything
from torchrepro._derive import (
    _seed_sequence_uint64,
    _seed_sequence_uint64_python,
    hash_string,
    normalize_seed,
    seed_sequence_words,
)
from torchrepro.errors import DeterminismError, SeedError
from torchrepro.seeding import root_seed

GOLDEN_PYTHON = 0.2147004015510413
GOLDEN_NUMPY = 0.2402204917545766
GOLDEN_TORCH = [0.8995607495307922, 0.9084936380386353]


def draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


# Derivation ----------------------------------------------------------------------------


def test_derived_seeds_keep_their_golden_values() -> None:
    assert derive_seed(11) == 3926704849073358691
    assert derive_seed(11, 0) == 11350860172270778117
    assert derive_seed(11, "data", 0, 1) == 5091976386060140560
    assert derive_seed("experiment-a", "worker", 3) == derive_seed(
        hash_string("experiment-a"), "worker", 3
    )
    assert hash_string("abc") == 13436514500253700074


def test_derivation_tells_apart_keys_that_addition_or_concatenation_would_merge() -> None:
    root = 5
    variants = [
        derive_seed(root, 1, 2),
        derive_seed(root, 12),
        derive_seed(root, 2, 1),
        derive_seed(root, "1", 2),
        derive_seed(root, 1, 2, 0),
        derive_seed(root, 3),
        derive_seed(root + 1, 1, 1),
    ]
    assert len(set(variants)) == len(variants)
    assert derive_seed(1, "rank", 0) != derive_seed(0, "rank", 1)


def test_derived_seeds_do_not_collide_across_roots_ranks_workers_and_epochs() -> None:
    seeds = np.array(
        [
            derive_seed(root, "worker", rank, worker, epoch)
            for root in (0, 1, 2**63 + 7)
            for rank in range(64)
            for worker in range(64)
            for epoch in range(16)
        ],
        dtype=np.uint64,
    )
    assert len(np.unique(seeds)) == len(seeds) == 196_608
    # 196,608 values in 2**32 slots: a well-mixed function gives ~4.5 collisions by the
    # birthday bound, and no function of the keys can promise none. A scheme that leaves
    # the low half unmixed (seed + k, or keys packed into the high bits) gives thousands.
    # What the low half would decide, torch's CPU stream, is seeded from all 64 bits (below).
    low = seeds & np.uint64(0xFFFFFFFF)
    assert len(seeds) - len(np.unique(low)) <= 20


@given(st.integers(0, 2**64 - 1), st.lists(st.integers(0, 2**64 - 1) | st.text(), max_size=4))
def test_derived_seeds_are_64_bit_and_repeatable(root: int, keys: list[int | str]) -> None:
    seed = derive_seed(root, *keys)
    assert 0 <= seed < 2**64
    assert seed == derive_seed(root, *keys)


@given(st.integers(0, 2**64 - 1))
def test_valid_int_seeds_are_taken_as_they_are(seed: int) -> None:
    assert normalize_seed(seed) == seed
    assert normalize_seed(np.uint64(seed)) == seed


@given(st.text())
def test_string_seeds_are_hashed_stably(text: str) -> None:
    assert normalize_seed(text) == hash_string(text)
    assert 0 <= normalize_seed(text) < 2**64


@given(
    st.integers(max_value=-1)
    | st.integers(min_value=2**64)
    | st.floats()
    | st.booleans()
    | st.binary()
    | st.none()
    | st.lists(st.integers())
)
def test_everything_else_is_refused_with_a_seed_error(bad: object) -> None:
    with pytest.raises(SeedError, match="seed must be"):
        normalize_seed(bad)


def test_seed_error_says_what_was_got_and_what_to_do() -> None:
    with pytest.raises(SeedError) as error:
        seed_everything(-1)
    message = str(error.value)
    assert "got -1" in message and "[0, 2**64)" in message and "string" in message
    assert isinstance(error.value, ValueError)


def test_keys_are_validated_like_seeds() -> None:
    with pytest.raises(SeedError, match="key 1 of derive_seed"):
        derive_seed(1, "ok", -3)


def test_torch_cpu_streams_use_all_64_bits_of_a_seed() -> None:
    from torchrepro._sources import _seed_torch

    torch.manual_seed(5)
    plain = torch.rand(4)
    torch.manual_seed(5 + 2**32)
    assert torch.equal(torch.rand(4), plain)  # torch alone keeps only the low 32 bits

    _seed_torch(5)
    ours = torch.rand(4)
    _seed_torch(5 + 2**32)
    assert not torch.equal(torch.rand(4), ours)
    _seed_torch(5)
    assert torch.equal(torch.rand(4), ours)
    assert torch.initial_seed() == 5


def test_derived_generators_use_all_64_bits_of_their_seed() -> None:
    from torchrepro._sources import seed_generator

    low = torch.rand(4, generator=seed_generator(torch.Generator(), 5))
    high = torch.rand(4, generator=seed_generator(torch.Generator(), 5 + 2**32))
    again = torch.rand(4, generator=seed_generator(torch.Generator(), 5))
    assert not torch.equal(low, high) and torch.equal(low, again)


def test_seeded_draws_keep_their_golden_values() -> None:
    seed_everything(11)
    assert random.random() == GOLDEN_PYTHON
    assert float(np.random.rand()) == GOLDEN_NUMPY
    assert torch.rand(2).tolist() == GOLDEN_TORCH


# seed_everything ----------------------------------------------------------------------


def test_seed_everything_returns_its_seed_and_repeats_every_source() -> None:
    assert seed_everything(11) == 11
    first = draws()
    assert seed_everything(11) == 11
    assert draws() == first
    seed_everything(12)
    assert draws() != first


def test_each_library_gets_its_own_stream() -> None:
    # With one integer for both, numpy's and torch's Mersenne Twisters emit one stream.
    seed_everything(11)
    numpy_words = np.random.randint(2**30, size=8)
    torch_words = torch.randint(2**30, (5,)).numpy()
    assert not set(torch_words) & set(numpy_words)


def test_string_seeds_seed_like_their_hash() -> None:
    assert seed_everything("my-experiment") == hash_string("my-experiment")


def test_seed_everything_exports_the_seed_for_child_processes() -> None:
    seed_everything(123)
    assert os.environ["TORCHREPRO_SEED"] == "123"
    assert os.environ["PYTHONHASHSEED"].isdigit()


def test_the_exported_hash_seed_follows_the_latest_seed_but_keeps_a_users(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from torchrepro._derive import hash_seed_for

    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    seed_everything(1)
    seed_everything(2)
    assert os.environ["PYTHONHASHSEED"] == str(hash_seed_for(2))
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    seed_everything(3)
    assert os.environ["PYTHONHASHSEED"] == "0"


def test_no_seed_reuses_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHREPRO_SEED", "77")
    assert seed_everything() == 77


def test_a_malformed_environment_seed_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for text in ("seventy", "1_000", "\u0663", " 7", "+7", "7" * 21):
        monkeypatch.setenv("TORCHREPRO_SEED", text)
        with pytest.raises(SeedError, match="TORCHREPRO_SEED must be a decimal integer"):
            seed_everything()


def test_no_seed_anywhere_draws_one_and_logs_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("TORCHREPRO_SEED", raising=False)
    seed = seed_everything()
    assert f"using seed {seed}" in caplog.text
    assert os.environ["TORCHREPRO_SEED"] == str(seed)


def test_a_bad_determinism_mode_changes_nothing() -> None:
    torch.manual_seed(3)
    before = torch.get_rng_state()
    with pytest.raises(DeterminismError):
        seed_everything(11, deterministic="yes")  # type: ignore[arg-type]
    assert torch.equal(torch.get_rng_state(), before)


def test_default_sets_the_recipe_flags_and_false_sets_none() -> None:
    torch.backends.cudnn.benchmark = True
    seed_everything(1, deterministic=False)
    assert torch.backends.cudnn.benchmark
    seed_everything(1)
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert not torch.are_deterministic_algorithms_enabled()
    seed_everything(1, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()


def test_derived_generators_are_independent_and_repeatable() -> None:
    seed_everything(11)
    a = torchrepro.numpy_generator("aug").random(3)
    b = torchrepro.numpy_generator("noise").random(3)
    assert torchrepro.numpy_generator("aug").random(3).tolist() == a.tolist()
    assert a.tolist() != b.tolist()
    t = torch.rand(3, generator=torchrepro.torch_generator("aug"))
    assert torch.equal(t, torch.rand(3, generator=torchrepro.torch_generator("aug")))


# isolate_rng ------------------------------------------------------------------------


def test_isolate_rng_restores_everything_after_an_exception() -> None:
    seed_everything(5)
    expected = draws()
    seed_everything(5)
    with pytest.raises(KeyError), torchrepro.isolate_rng():
        draws()
        seed_everything(99, deterministic=True)
        raise KeyError("boom")
    assert draws() == expected
    assert not torch.are_deterministic_algorithms_enabled()
    assert os.environ["TORCHREPRO_SEED"] == "5"
    assert root_seed() == 5


def test_isolate_rng_nests() -> None:
    seed_everything(5)
    expected = draws()
    seed_everything(5)
    with torchrepro.isolate_rng():
        with torchrepro.isolate_rng():
            inner = draws()
        assert draws() == inner
        draws()
    assert draws() == expected


# Real processes ---------------------------------------------------------------------


def test_a_training_with_workers_and_augmentation_repeats_bitwise_across_processes() -> None:
    def run() -> str:
        out = subprocess.run(
            [PYTHON, str(SCRIPTS / "train_aug.py"), "--seed", "11"],
            env=child_env(),
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    first, second = run(), run()
    assert len(first) == 64
    assert first == second


def test_without_seeding_the_same_training_differs() -> None:
    def run() -> str:
        out = subprocess.run(
            [PYTHON, str(SCRIPTS / "train_aug.py"), "--plain"],
            env=child_env(),
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    assert run() != run()


@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=24))
def test_derivation_is_numpys_seed_sequence_written_out(words: list[int]) -> None:
    # Python's copy serves processes that have not loaded numpy (the launcher).
    expected = int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])
    assert _seed_sequence_uint64_python(words) == _seed_sequence_uint64(words) == expected


@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=24), st.integers(1, 700))
def test_seed_sequence_words_are_numpys_generate_state(words: list[int], count: int) -> None:
    expected = np.random.SeedSequence(words).generate_state(count)
    assert np.array_equal(seed_sequence_words(words, count), expected)


# -- bad input: a SeedError, never another exception, never silently accepted -----------


@pytest.mark.parametrize(
    "seed",
    [10**5000, -(10**5000), torch.tensor(5.0), 1.5, True, None.__class__, b"7"],
    ids=["huge", "huge-negative", "float-tensor", "float", "bool", "type", "bytes"],
)
def test_a_seed_of_the_wrong_kind_or_size_is_a_seed_error(seed: object) -> None:
    with pytest.raises(SeedError, match="must be an int in"):
        seed_everything(seed)  # type: ignore[arg-type]
    with pytest.raises(SeedError):
        derive_seed(11, seed)  # type: ignore[arg-type]


def test_a_str_seed_with_a_lone_surrogate_is_hashed_like_any_str() -> None:
    assert seed_everything("run\udc80") == hash_string("run\udc80") != hash_string("run")


@pytest.mark.parametrize("option", ["workers", "take_over"])
def test_flags_take_bools_only(option: str) -> None:
    with pytest.raises(SeedError, match=f"{option} must be True or False; got 'no'"):
        seed_everything(1, **{option: "no"})  # type: ignore[arg-type]


def test_cli_seeds_are_ascii_digits_or_strings_and_nothing_in_between(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from torchrepro.cli import main

    assert main(["run", "--seed", "9" * 5000, "--", "true"]) == 2
    assert "--seed must be a decimal integer in [0, 2**64)" in capsys.readouterr().err
    assert main(["run", "--seed", "-1", "--", "true"]) == 2
