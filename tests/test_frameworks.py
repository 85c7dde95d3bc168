"""The real frameworks, in real processes: plain, under `torchrepro run`, under `check`.

Each script in tests/scripts/frameworks/ is training code as its framework's users write
it, with no torchrepro call; every rank writes what it saw at each step (epoch, batch
shape, the dataset indices of the batch, what its sampler is an instance of; seen.py).
torchrepro may change which samples come in which order, never what is trained: the
same number of steps per epoch, the same batch shapes, every sample once per epoch across
the ranks; where the order comes from the framework's own DistributedSampler, the very
same batches. Then `check` calls each training bitwise identical, and finds noise planted
at step K at step K.

Installed with the `frameworks` extra (requirements-dev.txt); a test whose framework is
missing is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import PYTHON, SCRIPTS, TORCHRUN, child_env
from torchrepro.check import check_command

FRAMEWORKS = SCRIPTS / "frameworks"
ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
NOISE_STEP = 3

Record = dict[str, Any]


def needs(module: str) -> pytest.MarkDecorator:
    # Probed without importing: the framework runs in the child processes only.
    missing = importlib.util.find_spec(module) is None
    return pytest.mark.skipif(missing, reason=f"{module} is not installed (extra 'frameworks')")


LIGHTNING = [PYTHON, str(FRAMEWORKS / "lightning_train.py")]
HF = [PYTHON, str(FRAMEWORKS / "hf_train.py")]
ACCELERATE = [PYTHON, str(FRAMEWORKS / "accelerate_train.py")]
ACCELERATE_2_RANKS = [*TORCHRUN, str(FRAMEWORKS / "accelerate_train.py")]


def seen(folder: Path, command: list[str], *, run: bool, **env: str) -> list[Record]:
    """What each rank of ``command`` saw, run plainly or under `torchrepro run --seed 3`."""
    prefix = folder / ("run" if run else "plain")
    if run:
        command = [PYTHON, "-m", "torchrepro", "run", "--seed", "3", "--", *command]
    result = subprocess.run(
        command,
        env=child_env(SEEN=str(prefix), **ENV, **env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(path.read_text()) for path in sorted(folder.glob(f"{prefix.name}.rank*"))]


def with_callback(folder: Path, command: list[str], **env: str) -> list[Record]:
    """What each rank saw with torchrepro's framework callback in the script (CALLBACK=1)."""
    (folder / "callback").mkdir()
    return seen(folder / "callback", command, run=False, CALLBACK="1", TORCHREPRO_SEED="3", **env)


def by_epoch(record: Record) -> dict[int, list[Record]]:
    epochs: dict[int, list[Record]] = {}
    for step in record["steps"]:
        epochs.setdefault(step["epoch"], []).append(step)
    return epochs


def shape_of(records: list[Record]) -> list[Any]:
    """Per rank: rank, world size, sampler kind, and per epoch the shape of every batch."""
    return [
        (
            record["rank"],
            record["world_size"],
            record["sampler"],
            {e: [step["shape"] for step in steps] for e, steps in by_epoch(record).items()},
        )
        for record in records
    ]


def assert_each_sample_once_per_epoch(records: list[Record], samples: int) -> None:
    epochs = by_epoch(records[0]).keys()
    assert len(epochs) == 2
    for epoch in epochs:
        steps = [step for record in records for step in by_epoch(record)[epoch]]
        indices = [i for step in steps for i in step["indices"]]
        assert sorted(indices) == list(range(samples)), f"epoch {epoch}"


def check_env(**env: str) -> dict[str, str]:
    return {"PYTHONPATH": child_env()["PYTHONPATH"], **ENV, **env}


# ---------------------------------------------------------------- plain run vs torchrepro run


@needs("pytorch_lightning")
def test_lightning_on_one_device_trains_the_plain_runs_steps_batches_and_samples(
    tmp_path: Path,
) -> None:
    plain = seen(tmp_path, LIGHTNING, run=False)
    run = seen(tmp_path, LIGHTNING, run=True)
    assert shape_of(run) == shape_of(plain)
    assert shape_of(plain) == [(0, 1, "RandomSampler", {0: [[64, 32]] * 14, 1: [[64, 32]] * 14})]
    assert_each_sample_once_per_epoch(run, 896)
    callback = with_callback(tmp_path, LIGHTNING)
    assert shape_of(callback) == shape_of(plain)
    assert_each_sample_once_per_epoch(callback, 896)


@pytest.fixture(scope="module")
def lightning_ddp_plain(tmp_path_factory: pytest.TempPathFactory) -> list[Record]:
    return seen(tmp_path_factory.mktemp("lightning-ddp"), LIGHTNING, run=False, DEVICES="2")


@needs("pytorch_lightning")
@pytest.mark.parametrize("in_hook", ["0", "1"], ids=["loader-passed-to-fit", "loader-in-hook"])
def test_lightning_ddp_on_two_cpu_ranks_gives_each_rank_the_plain_runs_very_batches(
    tmp_path: Path, lightning_ddp_plain: list[Record], in_hook: str
) -> None:
    # Lightning re-creates the loader around its DistributedSampler (seed 0 in both runs):
    # the batches are the plain run's, to the sample.
    run = seen(tmp_path, LIGHTNING, run=True, DEVICES="2", LOADER_IN_HOOK=in_hook)
    per_epoch = {0: [[64, 32]] * 7, 1: [[64, 32]] * 7}
    assert shape_of(lightning_ddp_plain) == [
        (rank, 2, "DistributedSampler", per_epoch) for rank in (0, 1)
    ]
    assert run == lightning_ddp_plain
    assert_each_sample_once_per_epoch(run, 896)
    # The same with torchrepro's callback in the script.
    callback = with_callback(tmp_path, LIGHTNING, DEVICES="2", LOADER_IN_HOOK=in_hook)
    assert callback == lightning_ddp_plain


@needs("transformers")
def test_hf_trainer_trains_the_plain_runs_steps_batches_and_samples(tmp_path: Path) -> None:
    plain = seen(tmp_path, HF, run=False)
    run = seen(tmp_path, HF, run=True)
    assert shape_of(run) == shape_of(plain)
    assert shape_of(plain) == [(0, 1, "RandomSampler", {0: [[4, 8]] * 6, 1: [[4, 8]] * 6})]
    assert_each_sample_once_per_epoch(run, 24)
    callback = with_callback(tmp_path, HF)
    assert shape_of(callback) == shape_of(plain)
    assert_each_sample_once_per_epoch(callback, 24)


@needs("accelerate")
@pytest.mark.parametrize(
    "command, ranks", [(ACCELERATE, 1), (ACCELERATE_2_RANKS, 2)], ids=["1-process", "2-ranks"]
)
def test_accelerate_gives_each_rank_its_own_share_of_every_epoch_as_the_plain_run(
    tmp_path: Path, command: list[str], ranks: int
) -> None:
    # With 2 ranks accelerate shards one shuffled order's batches: every rank must draw
    # the same order, or samples are trained twice and others never.
    plain = seen(tmp_path, command, run=False)
    run = seen(tmp_path, command, run=True)
    steps = 12 // ranks
    per_epoch = {0: [[8, 32]] * steps, 1: [[8, 32]] * steps}
    assert shape_of(plain) == [(rank, ranks, "RandomSampler", per_epoch) for rank in range(ranks)]
    assert shape_of(run) == shape_of(plain)
    assert_each_sample_once_per_epoch(plain, 96)
    assert_each_sample_once_per_epoch(run, 96)
    callback = with_callback(tmp_path, command)
    assert shape_of(callback) == shape_of(plain)
    assert_each_sample_once_per_epoch(callback, 96)


# ---------------------------------------------------------------- torchrepro check

CHECKED = [
    pytest.param(LIGHTNING, 28, marks=needs("pytorch_lightning"), id="lightning"),
    pytest.param(HF, 12, marks=needs("transformers"), id="hf-trainer"),
    pytest.param(ACCELERATE, 24, marks=needs("accelerate"), id="accelerate"),
]


@pytest.mark.parametrize("command, steps", CHECKED)
def test_check_calls_an_unchanged_framework_training_bitwise_identical(
    command: list[str], steps: int
) -> None:
    report = check_command(command, seed=3, env=check_env(), timeout=300)
    assert report.verdict == "identical", report.render()
    assert report.steps_compared == steps


@pytest.mark.parametrize("command, steps", CHECKED)
def test_check_finds_noise_planted_in_a_framework_training_at_its_step(
    command: list[str], steps: int
) -> None:
    env = check_env(PLANT_NOISE_STEP=str(NOISE_STEP))
    report = check_command(command, seed=3, env=env, localize=False, timeout=300)
    assert report.verdict == "diverged", report.render()
    assert report.divergence is not None and report.divergence.step == NOISE_STEP
    assert f"DIVERGED at step {NOISE_STEP}" in report.render()


@needs("pytorch_lightning")
def test_check_compares_lightning_ddp_rank_by_rank_from_each_ranks_own_record(
    tmp_path: Path,
) -> None:
    # Lightning starts rank 1 itself, by running the script again: it inherits the
    # start-up hook and writes its own record.
    report = check_command(
        LIGHTNING, seed=3, env=check_env(DEVICES="2"), workdir=tmp_path, timeout=300
    )
    assert report.verdict == "identical", report.render()
    assert report.steps_compared == 14
    records = sorted(path.name for path in tmp_path.glob("*.jsonl"))
    assert records == [f"run{n}.rank{r}.jsonl" for n in (1, 2) for r in (0, 1)]


@needs("pytorch_lightning")
def test_check_finds_noise_planted_in_lightning_ddp_at_its_step() -> None:
    env = check_env(DEVICES="2", PLANT_NOISE_STEP=str(NOISE_STEP))
    report = check_command(LIGHTNING, seed=3, env=env, localize=False, timeout=300)
    assert report.verdict == "diverged", report.render()
    assert report.divergence is not None and report.divergence.step == NOISE_STEP
    assert report.divergence.rank is not None  # compared rank by rank
