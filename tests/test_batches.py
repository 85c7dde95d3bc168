"""The batch a record gives each step is what the data pipeline yielded for it, by label.

Real DataLoader workers, real frameworks (Lightning's prefetching fetcher, HF Trainer over
accelerate's one-batch-ahead DataLoaderShard): the recorded batch of step s is the one the
training step received, and a loss module's inputs are never taken for the batch.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import torchrepro
from conftest import PYTHON, SCRIPTS, child_env
from torchrepro.check import check_command
from torchrepro.digests import fingerprint
from torchrepro.records import read_record

LOSS_MODULE = [PYTHON, str(SCRIPTS / "loss_module.py")]


def test_a_dict_batch_is_recorded_by_key_and_an_evaluation_pass_takes_none(tmp_path: Path) -> None:
    samples = [{"input_ids": torch.arange(8) + i, "labels": torch.tensor(i % 2)} for i in range(8)]
    loader = DataLoader(samples, batch_size=4)
    model, criterion = nn.Sequential(nn.Linear(8, 2), nn.LogSoftmax(1)), nn.NLLLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trained = []
    with torchrepro.record(tmp_path / "r.jsonl", batch=True) as recorder:
        for _ in range(2):
            model.train()
            for batch in loader:
                trained.append(batch)
                loss = criterion(model(batch["input_ids"].float()), batch["labels"])
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                for batch in loader:  # an evaluation pass: no step's batch
                    model(batch["input_ids"].float())
    entries = read_record(recorder.path).entries
    assert [e["batch"] for e in entries] == [
        [
            {
                'batch["input_ids"] 4x8 int64': fingerprint(b["input_ids"]),
                'batch["labels"] 4 int64': fingerprint(b["labels"]),
            }
        ]
        for b in trained
    ]


def test_noise_inside_the_model_with_a_loss_module_is_not_blamed_on_the_batch() -> None:
    env = {"PYTHONPATH": child_env()["PYTHONPATH"], "PLANT_NOISE_STEP": "2"}
    report = check_command(LOSS_MODULE, seed=3, env=env, localize=False)
    assert report.divergence is not None and report.divergence.step == 2, report.render()
    assert report.divergence.section != "batch"
    assert "the input batch" not in report.render()


def test_unseeded_augmentation_in_a_worker_is_named_as_the_batch_with_its_label() -> None:
    env = {"PYTHONPATH": child_env()["PYTHONPATH"], "PLANT_AUGMENT": "1"}
    report = check_command(LOSS_MODULE, seed=3, env=env, localize=False)
    assert report.divergence is not None and report.divergence.step == 0, report.render()
    assert report.divergence.section == "batch"
    assert 'the input batch (batch["input_ids"] 16x16 int64)' in report.render()


# ---------------------------------------------------------------- frameworks


def needs(module: str) -> pytest.MarkDecorator:
    missing = importlib.util.find_spec(module) is None
    return pytest.mark.skipif(missing, reason=f"{module} is not installed (extra 'frameworks')")


def recorded_and_seen(tmp_path: Path, script: str) -> tuple[list[Any], list[Any]]:
    """Each step's recorded batches, and what the training step received, from a run under
    `torchrepro run` that records from the start-up hook, as check's runs do."""
    out, seen = tmp_path / "run.jsonl", tmp_path / "seen"
    command = [PYTHON, "-m", "torchrepro", "run", "--seed", "3", "--", PYTHON, script]
    env = child_env(
        TORCHREPRO_RECORD=str(out),
        TORCHREPRO_RECORD_WITH="batch",
        SEEN=str(seen),
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
    )
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = json.loads(Path(f"{seen}.rank0.json").read_text())["steps"]
    return [e["batch"] for e in read_record(out).entries], steps


def index_digest(step: dict[str, Any]) -> str:
    return str(fingerprint(torch.tensor(step["indices"])))


@needs("pytorch_lightning")
def test_lightnings_prefetching_fetcher_gives_each_step_the_batch_it_trained(
    tmp_path: Path,
) -> None:
    batches, steps = recorded_and_seen(tmp_path, str(SCRIPTS / "frameworks/lightning_stream.py"))
    assert len(batches) == len(steps) == 6
    for batch, step in zip(batches, steps):
        assert list(batch[0]) == [
            "batch[0] 16 int64",
            "batch[1] 16x32 float32",
            "batch[2] 16 float32",
        ]
        assert [b["batch[0] 16 int64"] for b in batch] == [index_digest(step)]


@needs("transformers")
def test_hf_trainers_one_batch_ahead_loader_gives_each_step_the_batch_it_trained(
    tmp_path: Path,
) -> None:
    batches, steps = recorded_and_seen(tmp_path, str(SCRIPTS / "frameworks/hf_train.py"))
    assert len(batches) == len(steps) == 12
    for batch, step in zip(batches, steps):
        assert [b['batch["idx"] 4 int64'] for b in batch] == [index_digest(step)]
        assert 'batch["input_ids"] 4x8 int64' in batch[0]
