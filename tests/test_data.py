from __future__ import annotations

import ast
import functools
import pickle
import random
import subprocess

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import torchrepro
from conftest import PYTHON, child_env
from torchrepro import seed_everything
from torchrepro.errors import SeedError


class Draws(Dataset[torch.Tensor]):
    """Each sample is one draw from each of Python, numpy and torch, as augmentation does."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(
            [random.random(), float(np.random.rand()), float(torch.rand(()))],
            dtype=torch.float64,
        )


class Indices(Dataset[int]):
    def __len__(self) -> int:
        return 32

    def __getitem__(self, index: int) -> int:
        return index


def recipe_worker_init_fn(worker_id: int, rank: int, seed: int) -> None:
    """The common recipe's worker_init_fn, exactly as users copy it."""
    worker_seed = rank + seed
    random.seed(worker_seed)
    np.random.seed(worker_seed)
    torch.manual_seed(worker_seed)


def worker_draws(make_loader: object, ranks: int = 2, epochs: int = 2) -> list[float]:
    """Every draw made by 2 workers per rank, for each rank and epoch, in a fixed order."""
    values: list[float] = []
    for rank in range(ranks):
        loader = make_loader(rank)  # type: ignore[operator]
        for _ in range(epochs):
            for batch in loader:
                values += batch.flatten().tolist()
    return values


def torchrepro_loader(monkeypatch: pytest.MonkeyPatch, rank: int) -> DataLoader[torch.Tensor]:
    monkeypatch.setenv("RANK", str(rank))
    seed_everything(11)
    return DataLoader(Draws(), batch_size=1, num_workers=2)


def test_worker_streams_are_distinct_across_workers_ranks_and_epochs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = worker_draws(functools.partial(torchrepro_loader, monkeypatch))
    assert len(values) == 96
    assert len(set(values)) == 96


def test_worker_streams_repeat_across_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    first = worker_draws(functools.partial(torchrepro_loader, monkeypatch))
    assert worker_draws(functools.partial(torchrepro_loader, monkeypatch)) == first


def test_the_recipes_worker_init_fn_repeats_streams_across_workers_and_epochs() -> None:
    def recipe_loader(rank: int) -> DataLoader[torch.Tensor]:
        torch.manual_seed(11)
        init = functools.partial(recipe_worker_init_fn, rank=rank, seed=11)
        return DataLoader(Draws(), batch_size=1, num_workers=2, worker_init_fn=init)

    values = worker_draws(recipe_loader)
    assert len(values) == 96
    assert len(set(values)) <= 24  # 2 distinct streams (one per rank) of 4 samples x 3 draws


def test_seed_worker_fixes_the_recipe_with_the_same_signature() -> None:
    def fixed_loader(rank: int) -> DataLoader[torch.Tensor]:
        torch.manual_seed(11)
        init = functools.partial(torchrepro.seed_worker, rank=rank, seed=11)
        return DataLoader(Draws(), batch_size=1, num_workers=2, worker_init_fn=init)

    values = worker_draws(fixed_loader)
    assert len(set(values)) == 96


def test_worker_init_fn_reads_the_seed_seed_everything_exported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def worker_draws(exported: str) -> list[float]:
        seed_everything(11, workers=False)
        monkeypatch.setenv("TORCHREPRO_SEED", exported)
        torch.manual_seed(0)  # the same per-epoch base seed for the loader every time
        loader = DataLoader(
            Draws(), batch_size=1, num_workers=2, worker_init_fn=torchrepro.worker_init_fn
        )
        return [value for batch in loader for value in batch.flatten().tolist()]

    first = worker_draws("11")
    assert len(set(first)) == 24
    assert worker_draws("11") == first
    assert not set(worker_draws("12")) & set(first)  # only the exported seed changed


def training_order(num_workers: int, disturb: bool) -> list[int]:
    seed_everything(11)
    train = DataLoader(Indices(), batch_size=4, shuffle=True, num_workers=num_workers)
    validation = DataLoader(Indices(), batch_size=4, shuffle=True)
    order: list[int] = []
    for _ in range(2):
        order += [int(i) for batch in train for i in batch]
        if disturb:
            torch.rand(100)  # another consumer of the global torch RNG
            list(validation)
    return order


@pytest.mark.parametrize("num_workers", [0, 2])
def test_training_order_ignores_num_workers_and_other_loaders(num_workers: int) -> None:
    reference = training_order(0, disturb=False)
    assert sorted(reference[:32]) == list(range(32))
    assert reference[:32] != reference[32:]  # each epoch is a new permutation
    assert training_order(num_workers, disturb=True) == reference


def test_without_torchrepro_a_validation_pass_changes_the_training_order() -> None:
    def order(disturb: bool) -> list[int]:
        torch.manual_seed(11)
        train = DataLoader(Indices(), batch_size=4, shuffle=True)
        result = []
        for _ in range(2):
            result += [int(i) for batch in train for i in batch]
            if disturb:
                torch.rand(100)
        return result

    assert order(True) != order(False)


def test_a_users_own_generator_and_worker_init_fn_are_respected() -> None:
    calls = []

    def mine(worker_id: int) -> None:
        calls.append(worker_id)

    seed_everything(11)
    generator = torch.Generator().manual_seed(3)
    loader = DataLoader(Indices(), shuffle=True, generator=generator, worker_init_fn=mine)
    assert loader.generator is generator
    loader.worker_init_fn(0)  # type: ignore[misc]
    assert calls == [0]


def test_workers_false_leaves_loaders_alone() -> None:
    seed_everything(11, workers=False)
    loader = DataLoader(Indices(), shuffle=True)
    assert loader.generator is None and loader.worker_init_fn is None


def test_seed_worker_without_any_seed_says_how_to_fix_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHREPRO_SEED", raising=False)
    with pytest.raises(SeedError, match="seed_everything"):
        torchrepro.seed_worker(0)


def test_the_worker_seeder_pickles_by_the_path_of_the_worker_seeding_module() -> None:
    seed_everything(11)
    seeder = DataLoader(Indices(), num_workers=2).worker_init_fn
    assert (type(seeder).__module__, type(seeder).__qualname__) == (
        "torchrepro.data.workers",
        "_WorkerSeeder",
    )
    assert b"torchrepro.data.workers" in pickle.dumps(seeder)
    assert pickle.loads(pickle.dumps(seeder)) == seeder


def test_a_spawned_worker_imports_only_what_seeding_needs() -> None:
    # What a spawned worker does first: unpickle the seeder, which imports its module.
    code = (
        "import pickle, sys; pickle.loads(sys.stdin.buffer.read()); "
        "print(sorted(m for m in sys.modules if m.startswith('torchrepro')))"
    )
    seed_everything(11)
    seeder = DataLoader(Indices(), num_workers=2).worker_init_fn
    result = subprocess.run(
        [PYTHON, "-c", code],
        input=pickle.dumps(seeder),
        env=child_env(),
        capture_output=True,
        check=True,
    )
    loaded = set(ast.literal_eval(result.stdout.decode()))
    assert loaded == {
        "torchrepro",
        "torchrepro._codec",
        "torchrepro._contract",
        "torchrepro._derive",
        "torchrepro._sources",
        "torchrepro.data",
        "torchrepro.data.workers",
        "torchrepro.errors",
    }


def test_spawned_workers_are_seeded_as_forked_ones() -> None:
    def draws(context: str) -> list[float]:
        seed_everything(11)
        loader = DataLoader(Draws(), batch_size=2, num_workers=2, multiprocessing_context=context)
        return [value for batch in loader for value in batch.flatten().tolist()]

    forked = draws("fork")
    assert len(set(forked)) == 24
    assert draws("spawn") == forked
