from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

import torchrepro
from torchrepro import seed_everything
from torchrepro.data.batches import batch_seed


class Augmented(Dataset[torch.Tensor]):
    """A sample plus one draw from each of Python, numpy and torch, as augmentation does."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int) -> torch.Tensor:
        noise = [random.random(), float(np.random.rand()), float(torch.rand(()))]
        return torch.tensor([index, *noise], dtype=torch.float64)


def noisy_collate(samples: list[torch.Tensor]) -> torch.Tensor:
    """A collate function that masks at random, as a language-model collator does."""
    batch = torch.stack(samples)
    return torch.cat([batch, torch.rand(len(samples), 1, dtype=torch.float64)], dim=1)


def epochs(workers: int, count: int = 2, **options: object) -> list[torch.Tensor]:
    seed_everything(11)
    loader = DataLoader(
        Augmented(), batch_size=4, shuffle=True, num_workers=workers,
        collate_fn=noisy_collate, **options,  # type: ignore[arg-type]
    )  # fmt: skip
    return [batch for _ in range(count) for batch in loader]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_augmentation_and_collation_are_the_same_for_any_number_of_workers(context: str) -> None:
    alone = epochs(0)
    assert all(torch.equal(a, b) for a, b in zip(alone, epochs(1, multiprocessing_context=context)))
    assert all(torch.equal(a, b) for a, b in zip(alone, epochs(2, multiprocessing_context=context)))


def test_each_epoch_draws_new_augmentation() -> None:
    batches = epochs(0)
    first = {int(row[0]): row[1:].tolist() for batch in batches[:6] for row in batch}
    second = {int(row[0]): row[1:].tolist() for batch in batches[6:] for row in batch}
    assert first.keys() == second.keys()
    assert all(first[index] != second[index] for index in first)


def test_loading_a_batch_in_the_main_process_leaves_the_training_streams_alone() -> None:
    seed_everything(11)
    expected = torch.rand(3)
    seed_everything(11)
    loader = DataLoader(Augmented(), batch_size=4, shuffle=True, collate_fn=noisy_collate)
    next(iter(loader))
    assert torch.equal(torch.rand(3), expected)


def test_a_resume_mid_epoch_with_workers_loads_the_augmentation_of_the_whole_run() -> None:
    whole = epochs(2)
    seed_everything(11)
    loader = DataLoader(Augmented(), batch_size=4, shuffle=True, num_workers=2)
    batches = iter(loader)
    for _ in range(4):
        next(batches)
    saved = torchrepro.state_dict()
    del batches
    seed_everything(11)
    resumed = DataLoader(Augmented(), batch_size=4, shuffle=True, num_workers=2)
    torchrepro.load_state_dict(saved)
    rest = list(resumed) + list(resumed)
    assert all(torch.equal(a, b[:, :4]) for a, b in zip(rest, whole[4:], strict=True))


class EpochSampler(Sampler[int]):
    """A sampler of the user's with ``set_epoch`` (the loader is seeded, not tracked)."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(range(24))

    def __len__(self) -> int:
        return 24


def test_an_untracked_loader_takes_the_epoch_its_sampler_was_given() -> None:
    def first_batch(epoch: int) -> torch.Tensor:
        seed_everything(11)
        sampler = EpochSampler()
        sampler.set_epoch(epoch)
        return next(iter(DataLoader(Augmented(), batch_size=4, sampler=sampler)))

    # A loader re-created for a resume at epoch 1 loads what the first one loaded then.
    seed_everything(11)
    sampler = EpochSampler()
    loader = DataLoader(Augmented(), batch_size=4, sampler=sampler)
    next(iter(loader))
    sampler.set_epoch(1)
    assert torch.equal(next(iter(loader)), first_batch(1))
    assert not torch.equal(first_batch(0), first_batch(1))


def test_persistent_workers_keep_the_worker_streams_and_still_repeat() -> None:
    first = epochs(2, persistent_workers=True)
    second = epochs(2, persistent_workers=True)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    rows = [row for batch in first for row in batch]
    assert len({tuple(row[1:].tolist()) for row in rows}) == len(rows)


def test_a_loader_created_before_seed_everything_loads_as_pytorch_does() -> None:
    seed_everything(11, workers=False)
    torch.manual_seed(5)
    plain = next(iter(DataLoader(Augmented(), batch_size=4)))
    torch.manual_seed(5)
    torch.empty((), dtype=torch.int64).random_()  # the iterator's base seed
    assert torch.equal(plain[:, 3], torch.stack([torch.rand(()) for _ in range(4)]).double())


def test_a_batch_seed_depends_on_the_indices_and_their_order_and_skips_other_keys() -> None:
    assert batch_seed(7, [1, 2]) == batch_seed(7, [1, 2])
    assert len({batch_seed(7, [1, 2]), batch_seed(7, [2, 1]), batch_seed(8, [1, 2])}) == 3
    assert batch_seed(7, 3) == batch_seed(7, [3])
    assert batch_seed(7, ["a"]) is None
    assert batch_seed(7, [True]) is None
    assert batch_seed(7, [2**70]) is None
