from __future__ import annotations

import ast
import functools
import inspect
import pickle
import random
import subprocess

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

import torchrepro
from conftest import PYTHON, child_env
from torchrepro import seed_everything
from torchrepro.data.loaders import LoaderPosition, apply_positions
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
        "torchrepro.data.batches",
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


# ---------------------------------------------------------------- what frameworks read


def test_the_hooks_keep_pytorchs_signatures() -> None:
    # Lightning re-creates a loader from these: with **kwargs, batch_size fell back to 1.
    seed_everything(11)
    loader = inspect.signature(DataLoader.__init__).parameters
    sampler = inspect.signature(DistributedSampler.__init__).parameters
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    assert not [p for p in (*loader.values(), *sampler.values()) if p.kind in variadic]
    assert list(loader)[:4] == ["self", "dataset", "batch_size", "shuffle"]
    assert loader["batch_size"].default == 1 and "generator" in loader
    assert list(sampler)[1:] == ["dataset", "num_replicas", "rank", "shuffle", "seed", "drop_last"]


def test_a_shuffled_loaders_sampler_is_a_random_sampler_with_pytorchs_attributes() -> None:
    seed_everything(11)
    loader = DataLoader(Indices(), batch_size=4, shuffle=True)
    sampler = loader.sampler
    assert isinstance(sampler, RandomSampler) and not isinstance(sampler, SequentialSampler)
    assert sampler.data_source is loader.dataset and sampler.generator is loader.generator
    assert (sampler.replacement, sampler.num_samples, len(sampler)) == (False, 32, 32)
    assert type(loader.batch_sampler) is BatchSampler and loader.batch_sampler.sampler is sampler
    in_order = DataLoader(Indices(), batch_size=4).sampler
    assert isinstance(in_order, SequentialSampler) and not isinstance(in_order, RandomSampler)


def test_every_rank_draws_the_same_shuffle_order_from_its_own_generator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As ranks seeded alike do: accelerate shards one order's batches across the ranks.
    def first_epoch(rank: int) -> tuple[list[int], torch.Tensor]:
        monkeypatch.setenv("RANK", str(rank))
        seed_everything(11)
        loader = DataLoader(Indices(), batch_size=4, shuffle=True)
        assert loader.generator is not None
        return [int(i) for batch in loader for i in batch], loader.generator.get_state()

    (order, state), (other_order, other_state) = first_epoch(0), first_epoch(1)
    assert order == other_order and sorted(order) == list(range(32))
    assert not torch.equal(state, other_state)


def test_a_loader_re_created_around_a_torchrepro_sampler_gets_a_new_order_each_epoch() -> None:
    # What accelerate's prepare does with one process: a new loader over the old batch sampler,
    # generator and worker_init_fn.
    def mine(worker_id: int) -> None:
        pass

    seed_everything(11)
    loader = DataLoader(Indices(), batch_size=4, shuffle=True, worker_init_fn=mine)
    again = DataLoader(
        loader.dataset,
        batch_sampler=loader.batch_sampler,
        generator=loader.generator,
        worker_init_fn=loader.worker_init_fn,
    )
    assert again.generator is not None and again.generator is not loader.generator
    assert again.worker_init_fn.user_fn is mine  # type: ignore[union-attr]
    epochs = [[int(i) for batch in again for i in batch] for _ in range(3)]
    assert all(sorted(epoch) == list(range(32)) for epoch in epochs)
    assert epochs[0] != epochs[1] != epochs[2]


def test_a_users_distributed_sampler_stays_a_distributed_sampler_with_its_attributes() -> None:
    seed_everything(11)
    users = DistributedSampler(Indices(), num_replicas=2, rank=1, seed=4)
    loader = DataLoader(Indices(), batch_size=4, sampler=users)
    sampler = loader.sampler
    assert isinstance(sampler, DistributedSampler)
    assert (sampler.num_replicas, sampler.rank, sampler.seed, len(sampler)) == (2, 1, 4, 16)
    users.set_epoch(3)
    assert sampler.epoch == 3 and list(sampler) == list(users)
    again = DataLoader(Indices(), batch_size=4, sampler=sampler)  # as Lightning re-creates it
    assert again.sampler.sampler is users  # type: ignore[attr-defined]


class OwnSignature(DataLoader[int]):
    def __init__(self, data: Dataset[int], size: int) -> None:
        self.size = size
        super().__init__(data, size, shuffle=True)


class Keywords(DataLoader[int]):
    def __init__(self, dataset: Dataset[int], **options: object) -> None:
        super().__init__(dataset=dataset, shuffle=True, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "make",
    [lambda: OwnSignature(Indices(), 4), lambda: Keywords(Indices(), batch_size=4)],
    ids=["own-signature", "keywords"],
)
def test_dataloader_subclasses_are_seeded_tracked_and_resumable(make: object) -> None:
    seed_everything(11)
    whole = [batch.tolist() for batch in make()]  # type: ignore[operator]
    assert [len(batch) for batch in whole] == [4] * 8
    assert sorted(i for batch in whole for i in batch) == list(range(32))
    seed_everything(11)
    loader = make()  # type: ignore[operator]
    assert isinstance(loader.sampler, RandomSampler)
    apply_positions([LoaderPosition(0, epoch=0, batch=5, samples=32, batch_size=4)])
    assert [batch.tolist() for batch in loader] == whole[5:]
    assert "size" in inspect.signature(OwnSignature.__init__).parameters


@pytest.mark.parametrize("index", [1.5, True, "3", None])
def test_sample_rng_takes_an_int_index_only(index: object) -> None:
    seed_everything(1)
    with pytest.raises(SeedError, match="the sample index must be an int"):
        with torchrepro.sample_rng(index):  # type: ignore[arg-type]
            pass


def test_seed_worker_takes_an_int_worker_id_only() -> None:
    with pytest.raises(SeedError, match="worker_id must be an int"):
        torchrepro.seed_worker("a", seed=1)  # type: ignore[arg-type]
