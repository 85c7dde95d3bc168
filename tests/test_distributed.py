"""torchrun and DistributedDataParallel: real ranks (2, gloo, CPU) where behaviour lives in
processes; the rank bookkeeping in-process with torchrun's variables set by hand."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

import torchrepro
from conftest import PYTHON, ROOT, SCRIPTS, TORCHRUN, child_env
from torchrepro import derive_seed
from torchrepro.distributed import split_streams, streams_split, verify_replicas
from torchrepro.errors import DistributedError, SeedError, StateError
from torchrepro.records import read_record

STREAMS = str(SCRIPTS / "ddp_streams.py")
EXAMPLE = str(ROOT / "examples" / "ddp.py")


def torchrun(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TORCHRUN, *args], env=child_env(**env), capture_output=True, text=True, timeout=120
    )


def ranks_report(out: Path, **env: str) -> dict[int, dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    result = torchrun(STREAMS, OUT=str(out), **env)
    assert result.returncode == 0, result.stderr[-4000:]
    return {r: json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)}


def torchrepro_check(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "torchrepro", "check", *args, "--", *TORCHRUN, STREAMS],
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[dict[int, dict[str, Any]]]:
    folder = tmp_path_factory.mktemp("ddp")
    return [ranks_report(folder / name) for name in ("a", "b")]


# ---------------------------------------------------------------- real torchrun ranks


def test_two_torchrun_runs_give_bitwise_identical_parameters_on_every_rank(
    two_runs: list[dict[int, dict[str, Any]]],
) -> None:
    first, second = two_runs
    for rank in (0, 1):
        assert first[rank] == second[rank]
    assert first[0]["final"] == first[1]["final"]


def test_ranks_share_initial_parameters_but_draw_distinct_augmentation_and_dropout(
    two_runs: list[dict[int, dict[str, Any]]],
) -> None:
    zero, one = two_runs[0][0], two_runs[0][1]
    assert zero["initial"] == one["initial"]
    assert zero["augmentation"] != one["augmentation"]
    assert zero["dropout"] != one["dropout"]
    assert zero["worker_augmentation"] != one["worker_augmentation"]


def test_the_distributed_sampler_order_comes_from_the_root_seed_and_splits_the_data(
    two_runs: list[dict[int, dict[str, Any]]],
) -> None:
    zero, one = two_runs[0][0], two_runs[0][1]
    expected = derive_seed(7, "sampler", 0) & (2**63 - 1)
    assert zero["sampler_seed"] == one["sampler_seed"] == expected
    assert sorted(zero["order"] + one["order"]) == list(range(32))


def test_check_on_torchrun_names_rank_1_and_the_step_of_noise_planted_on_rank_1(
    tmp_path: Path,
) -> None:
    result = torchrepro_check(
        "--seed", "3", "--json", str(tmp_path / "report.json"),
        OUT=str(tmp_path), PLANT_NOISE_RANK="1", PLANT_NOISE_STEP="3",
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "DIVERGED at step 3 on rank 1" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["divergence"]["rank"] == 1 and report["divergence"]["section"] == "batch"


def test_check_reports_a_replica_that_drifts_by_rank_and_parameter(tmp_path: Path) -> None:
    workdir = tmp_path / "check"
    result = torchrepro_check(
        "--seed", "3", "--workdir", str(workdir),
        OUT=str(tmp_path), PLANT_DRIFT_RANK="1", PLANT_DRIFT_STEP="1",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "after step 2, rank 1's 2.bias differs from rank 0's" in result.stdout
    record = read_record(workdir / "run1.rank1.jsonl")
    entries = record.entries
    assert entries[1]["replicas"] == {"step": 1, "checked": 4, "drifting": []}
    assert entries[2]["replicas"]["drifting"] == [[1, "2.bias"]]
    assert "replicas differ after optimizer step 2: rank 1" in (workdir / "run1.stderr").read_text()


def test_without_a_seed_ranks_refuse_to_draw_their_own_before_the_group_exists(
    tmp_path: Path,
) -> None:
    result = torchrun(STREAMS, OUT=str(tmp_path), SEED="none")
    assert result.returncode != 0
    assert "SeedError: no seed on rank" in result.stderr
    assert "torchrepro run" in result.stderr


def test_without_a_seed_rank_0s_seed_is_broadcast_once_the_group_exists(tmp_path: Path) -> None:
    reports = ranks_report(tmp_path, SEED="none", INIT_FIRST="1")
    assert reports[0]["root"] == reports[1]["root"]
    assert reports[0]["initial"] == reports[1]["initial"]


def test_the_ddp_example_stopped_and_resumed_under_torchrun_matches_the_uninterrupted_run(
    tmp_path: Path,
) -> None:
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    for args in (["--workdir", str(full)], ["--workdir", str(resumed), "--stop-at", "7"],
                 ["--workdir", str(resumed), "--resume"]):  # fmt: skip
        result = torchrun(EXAMPLE, *args)
        assert result.returncode == 0, result.stderr[-4000:]
    for rank in (0, 1):
        expected = (full / f"steps.rank{rank}.txt").read_text()
        assert len(expected.splitlines()) == 16
        assert (resumed / f"steps.rank{rank}.txt").read_text() == expected
    assert (full / "steps.rank0.txt").read_text() == (full / "steps.rank1.txt").read_text()


def test_check_resume_at_under_torchrun_finds_the_resumed_ranks_identical() -> None:
    result = subprocess.run(
        [PYTHON, "-m", "torchrepro", "check", "--seed", "5", "--resume-at", "5", "--",
         *TORCHRUN, EXAMPLE],
        env=child_env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bitwise identical: 2 runs, 16 steps compared (run 2 stopped after step 5" in (
        result.stdout
    )


# ---------------------------------------------------------------- one process, ranks by hand


def as_rank(monkeypatch: pytest.MonkeyPatch, rank: int, world: int = 2) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


def test_split_streams_gives_each_rank_its_own_stream_that_repeats(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    draws = {}
    for rank in (0, 1, 1):
        as_rank(monkeypatch, rank)
        torchrepro.seed_everything(11)
        shared = torch.rand(3)
        assert split_streams() == derive_seed(11, "rank", rank)
        draws.setdefault(rank, []).append((shared, torch.rand(3)))
    assert torch.equal(draws[0][0][0], draws[1][0][0])
    assert not torch.equal(draws[0][0][1], draws[1][0][1])
    assert torch.equal(draws[1][0][1], draws[1][1][1])


def test_split_streams_before_seed_everything_is_refused() -> None:
    torchrepro.distributed.configure(None)
    with pytest.raises(SeedError, match="seed_everything"):
        split_streams()


def test_a_replica_interval_that_is_not_a_non_negative_int_is_refused() -> None:
    with pytest.raises(DistributedError, match="got -1"):
        verify_replicas(-1)


def test_a_distributed_sampler_keeps_a_seed_the_user_gave() -> None:
    torchrepro.seed_everything(11)
    assert DistributedSampler(range(8), num_replicas=2, rank=0, seed=5).seed == 5
    derived = DistributedSampler(range(8), num_replicas=2, rank=0).seed
    assert derived == derive_seed(11, "sampler", 0) & (2**63 - 1)


def test_a_state_saved_under_another_world_size_is_refused_unless_resharded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    as_rank(monkeypatch, 1)
    torchrepro.seed_everything(11)
    saved = torchrepro.state_dict()
    as_rank(monkeypatch, 1, world=4)
    torchrepro.seed_everything(11)
    with pytest.raises(StateError, match="2-process run; this process is rank 1 of 4"):
        torchrepro.load_state_dict(saved)
    torchrepro.load_state_dict(saved, reshard=True)


def test_a_state_saved_by_another_rank_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    as_rank(monkeypatch, 0)
    torchrepro.seed_everything(11)
    saved = torchrepro.state_dict()
    as_rank(monkeypatch, 1)
    with pytest.raises(StateError, match="holds rank 0's state; this process is rank 1"):
        torchrepro.load_state_dict(saved)


def test_a_restored_state_says_whether_the_streams_were_split(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    as_rank(monkeypatch, 1)
    torchrepro.seed_everything(11)
    split_streams()
    saved = torchrepro.state_dict()
    torchrepro.seed_everything(11)
    assert not streams_split()
    torchrepro.load_state_dict(saved)
    assert streams_split()


def test_a_loader_over_a_distributed_sampler_resumes_mid_epoch_without_loading_skipped_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    as_rank(monkeypatch, 1)

    def make() -> tuple[DistributedSampler[int], DataLoader[Any]]:
        torchrepro.seed_everything(11)
        sampler = DistributedSampler(list(range(40)), num_replicas=2, rank=1)
        return sampler, DataLoader(sampler.dataset, batch_size=4, sampler=sampler)

    sampler, loader = make()
    sampler.set_epoch(1)
    iterator = iter(loader)
    seen = [next(iterator).tolist() for _ in range(2)]
    saved = torchrepro.state_dict()
    rest = [batch.tolist() for batch in iterator]
    assert len(seen) + len(rest) == 5

    sampler, loader = make()
    torchrepro.load_state_dict(saved)
    sampler.set_epoch(1)
    assert [batch.tolist() for batch in loader] == rest

    # A framework that calls set_epoch only after iter() (Lightning) still resumes the
    # saved epoch; afterwards the epoch is the one set_epoch gives.
    sampler, loader = make()
    torchrepro.load_state_dict(saved)
    assert [batch.tolist() for batch in loader] == rest
    sampler.set_epoch(2)
    assert sampler.epoch == 2 and len(list(loader)) == 5
