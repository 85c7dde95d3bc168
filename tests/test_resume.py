"""Data order, per-sample randomness and exact resume, in real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

import torchrepro
from torchrepro.data.loaders import (
    LoaderPosition,
    apply_positions,
    check_positions,
    loader_positions,
)
from torchrepro.data.per_sample import sample_seed
from torchrepro.data.samplers import SampleIndex
from torchrepro.errors import StateError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "resume.py"
STEPS_PER_EPOCH = 12
TOTAL_STEPS = 36


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[None]:
    with torchrepro.isolate_rng():
        yield


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def _run_together(commands: list[list[str]], at_once: int = 4) -> None:
    """Runs example processes, a few at a time, and checks each exits as expected."""
    waiting = list(commands)
    running: list[tuple[list[str], subprocess.Popen[str]]] = []
    while waiting or running:
        while waiting and len(running) < at_once:
            command = waiting.pop(0)
            process = subprocess.Popen(
                [sys.executable, str(EXAMPLE), *command],
                env=_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            running.append((command, process))
        command, process = running.pop(0)
        _, stderr = process.communicate(timeout=180)
        expected = -signal.SIGKILL if "--crash-after" in command else 0
        assert process.returncode == expected, f"{command}: {stderr[-2000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """steps.txt of every run the tests compare, by name.

    Stops: after the last step of epoch 1 and mid-epoch 2, with 0 and 2 workers; the
    mid-epoch run with 2 workers is killed with SIGKILL right after its checkpoint.
    """
    root = tmp_path_factory.mktemp("runs")
    whole = {f"whole-w{workers}": ["--workers", str(workers)] for workers in (0, 1, 3)}
    stops = {
        "stop12-w0": ["--workers", "0", "--stop-at", "12"],
        "stop17-w0": ["--workers", "0", "--stop-at", "17"],
        "stop12-w2": ["--workers", "2", "--stop-at", "12"],
        "crash17-w2": ["--workers", "2", "--crash-after", "17"],
    }
    _run_together(
        [["--workdir", str(root / name), *args] for name, args in {**whole, **stops}.items()]
    )
    lines = {name: (root / name / "steps.txt").read_text().splitlines() for name in stops}
    lines = {f"{name}-before-resume": text for name, text in lines.items()}
    _run_together(
        [["--workdir", str(root / name), *args[:2], "--resume"] for name, args in stops.items()]
    )
    for name in [*whole, *stops]:
        lines[name] = (root / name / "steps.txt").read_text().splitlines()
    return lines


def test_an_uninterrupted_run_writes_one_digest_per_step(runs: dict[str, list[str]]) -> None:
    lines = runs["whole-w0"]
    assert [line.split()[:2] for line in lines] == [["step", str(i)] for i in range(1, 37)]
    assert len({line.split()[2] for line in lines}) == TOTAL_STEPS


@pytest.mark.parametrize("workers", [1, 3])
def test_parameters_are_identical_for_any_number_of_workers(
    runs: dict[str, list[str]], workers: int
) -> None:
    assert runs[f"whole-w{workers}"] == runs["whole-w0"]


@pytest.mark.parametrize("name", ["stop12-w0", "stop17-w0", "stop12-w2"])
def test_stopping_and_resuming_gives_every_later_step_of_the_uninterrupted_run(
    runs: dict[str, list[str]], name: str
) -> None:
    stop = int(name[4:6])
    assert runs[f"{name}-before-resume"] == runs["whole-w0"][:stop]
    assert runs[name] == runs["whole-w0"]


def test_a_run_killed_right_after_its_checkpoint_resumes_exactly(
    runs: dict[str, list[str]],
) -> None:
    assert runs["crash17-w2-before-resume"] == runs["whole-w0"][:17]
    assert runs["crash17-w2"] == runs["whole-w0"]


# ---------------------------------------------------------------- in-process behaviour


class Counting(Dataset[int]):
    """Counts the samples it loads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.loaded = 0

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        self.loaded += 1
        return int(index)


def _indices(loader: DataLoader[int]) -> list[list[int]]:
    return [batch.tolist() for batch in loader]


def _position(**fields: int) -> LoaderPosition:
    return LoaderPosition(**{"index": 0, "samples": 40, "batch_size": 4, **fields})


def test_resuming_at_a_batch_loads_only_the_batches_after_it() -> None:
    torchrepro.seed_everything(5)
    whole = _indices(DataLoader(Counting(40), batch_size=4, shuffle=True))

    torchrepro.seed_everything(5)
    dataset = Counting(40)
    loader = DataLoader(dataset, batch_size=4, shuffle=True)
    apply_positions([_position(epoch=0, batch=7)])
    assert _indices(loader) == whole[7:]
    assert dataset.loaded == 12


def test_each_epoch_has_its_own_order_that_does_not_depend_on_earlier_epochs() -> None:
    torchrepro.seed_everything(5)
    loader = DataLoader(Counting(40), batch_size=4, shuffle=True)
    epochs = [_indices(loader) for _ in range(3)]
    assert epochs[0] != epochs[1] != epochs[2]

    torchrepro.seed_everything(5)
    later = DataLoader(Counting(40), batch_size=4, shuffle=True)
    apply_positions([_position(epoch=2, batch=0)])
    assert _indices(later) == epochs[2]


def test_position_inside_the_last_batch_stays_in_the_epoch_and_after_it_moves_on() -> None:
    torchrepro.seed_everything(5)
    loader = DataLoader(Counting(8), batch_size=4, shuffle=True)
    iterator = iter(loader)
    next(iterator), next(iterator)
    assert loader_positions()[0].epoch == 0
    assert loader_positions()[0].batch == 2
    with pytest.raises(StopIteration):
        next(iterator)
    assert (loader_positions()[0].epoch, loader_positions()[0].batch) == (1, 0)


def test_an_unshuffled_loader_is_tracked_and_keeps_its_order() -> None:
    torchrepro.seed_everything(5)
    loader = DataLoader(Counting(10), batch_size=3)
    assert _indices(loader) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_a_loader_created_after_load_takes_its_saved_position() -> None:
    torchrepro.seed_everything(5)
    whole = _indices(DataLoader(Counting(40), batch_size=4, shuffle=True))
    torchrepro.seed_everything(5)
    apply_positions([_position(epoch=0, batch=9)])
    assert _indices(DataLoader(Counting(40), batch_size=4, shuffle=True)) == whole[9:]


def test_a_position_for_a_dataset_of_another_size_is_refused() -> None:
    torchrepro.seed_everything(5)
    loader = DataLoader(Counting(30), batch_size=4, shuffle=True)
    with pytest.raises(StateError, match="30 samples in batches of 4"):
        check_positions([_position(epoch=0, batch=1)])
    del loader


def test_loaders_with_a_sampler_of_their_own_or_an_iterable_dataset_are_not_tracked() -> None:
    class Stream(IterableDataset[int]):
        def __iter__(self) -> Iterator[int]:
            return iter(range(4))

    torchrepro.seed_everything(5)
    loaders = [DataLoader(Stream(), batch_size=2), DataLoader(Counting(4), sampler=[3, 2, 1, 0])]
    assert loader_positions() == []
    with pytest.raises(StateError, match="not tracked"):
        check_positions([_position(epoch=0, batch=1, samples=4)])
    assert len(loaders) == 2


class Augmented(Dataset[torch.Tensor]):
    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> torch.Tensor:
        with torchrepro.sample_rng(index):
            noise = [float(np.random.rand()), float(torch.rand(()))]
            return torch.tensor([float(index), *noise])


def _samples(workers: int, persistent: bool = False) -> list[list[float]]:
    torchrepro.seed_everything(3)
    loader = DataLoader(
        Augmented(),
        batch_size=5,
        shuffle=True,
        num_workers=workers,
        persistent_workers=persistent,
        multiprocessing_context="fork" if workers else None,
    )
    return [row for _ in range(2) for batch in loader for row in batch.tolist()]


def test_per_sample_randomness_is_the_same_in_any_worker_and_differs_across_epochs() -> None:
    single = _samples(0)
    assert _samples(2) == single
    assert _samples(2, persistent=True) == single
    by_sample: dict[float, set[tuple[float, ...]]] = {}
    for row in single:
        by_sample.setdefault(row[0], set()).add(tuple(row[1:]))
    assert all(len(draws) == 2 for draws in by_sample.values())


def test_sample_rng_leaves_the_main_process_streams_where_they_were() -> None:
    torchrepro.seed_everything(3)
    expected = torch.rand(3)
    torchrepro.seed_everything(3)
    with torchrepro.sample_rng(4) as seed:
        torch.rand(100)
    assert torch.equal(torch.rand(3), expected)
    assert seed == sample_seed(4)


def test_seed_per_sample_wraps_a_dataset_like_sample_rng() -> None:
    class Plain(Dataset[float]):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, index: int) -> float:
            return float(torch.rand(()))

    torchrepro.seed_everything(3)
    wrapped = torchrepro.seed_per_sample(Plain())
    assert wrapped[1] == wrapped[1] != wrapped[2]


def test_sample_index_survives_pickling_and_indexes_like_an_int() -> None:
    import pickle

    index = pickle.loads(pickle.dumps(SampleIndex(2, stream=99)))
    assert (index, index.stream, ["a", "b", "c"][index]) == (2, 99, "c")
