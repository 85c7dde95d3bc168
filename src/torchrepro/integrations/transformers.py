"""Exact resume in the HF Trainer: ``callbacks=[TorchReproCallback()]``, then Trainer's own resume.

``trainer.train(resume_from_checkpoint=...)`` restores weights, optimizer, scheduler and
the global random streams, and skips the batches the interrupted epoch had trained on;
what it cannot put back is the augmentation and random collation of the batches after
them (drawn in workers that start afresh, or in the main process interleaved with the
batch accelerate fetched ahead). With the callback:

- at ``on_init_end`` (before Trainer creates its loaders) it follows ``args.seed`` (the
  generators stay as Trainer seeded them), so each batch is loaded under streams of its
  own (:mod:`torchrepro.data.batches`): a batch's augmentation no longer depends on where
  the epoch started, on the workers, or on the batch fetched ahead;
- ``on_save`` writes every rank's :func:`torchrepro.state_dict` to ``torchrepro.pt`` in the
  checkpoint folder, beside Trainer's files (plain data: ``torch.load(weights_only=True)``
  reads it), from the main process;
- on resume, ``on_train_begin`` reads it from the folder given to
  ``train(resume_from_checkpoint=...)`` (the latest checkpoint in ``output_dir`` for
  ``True``) and checks it (the seed, the number of ranks), and the first ``on_step_begin`` puts the
  random streams back, registered generators included, after Trainer's own restore.

Trainer skips the trained batches itself (``ignore_data_skip=False``, its default), without
loading them for a map-style dataset. With ``ignore_data_skip=True`` it restarts an
interrupted epoch at its first batch and trains those batches again: a resume mid-epoch is
then not the uninterrupted run, and the callback says so in a warning.

Under ``torchrepro check --resume-at K`` each run writes its checkpoints to its own folder
(``output_dir`` is set to it), the callback stops the run after step K with a checkpoint
(``control.should_save``, ``should_training_stop``), and the resumed run's ``train()`` gets
``resume_from_checkpoint=True`` (the latest checkpoint there): the check goes through
Trainer's own save and resume.

Examples:
    >>> from transformers import TrainerCallback
    >>> from torchrepro.integrations.transformers import TorchReproCallback
    >>> isinstance(TorchReproCallback(), TrainerCallback)
    True
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import (
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint

from torchrepro import state as torchrepro_state
from torchrepro._derive import SeedLike, normalize_seed
from torchrepro.integrations import _resume
from torchrepro.state import RNGState

log = logging.getLogger("torchrepro")

STATE_FILE = "torchrepro.pt"
"""The file the callback writes in each of Trainer's checkpoint folders."""


def _checkpoint_folder(args: TrainingArguments, state: TrainerState) -> Path:
    """The folder Trainer saves the checkpoint of ``state.global_step`` in."""
    return Path(args.output_dir or ".") / f"checkpoint-{state.global_step}"


def _resume_argument(trainer: Trainer, value: object) -> object:
    """``train``'s ``resume_from_checkpoint``, noted by the callback (which folder to read
    torchrepro.pt from); ``True`` (the latest checkpoint) when check resumes this run."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TorchReproCallback):
            check = callback._check
            if value is None and check is not None and check.resume:
                value = True
            folder = value
            if value is True:
                folder = get_last_checkpoint(trainer.args.output_dir or ".")  # type: ignore[no-untyped-call]
            callback._resuming_from = Path(folder) if isinstance(folder, (str, Path)) else None
    return value


class TorchReproCallback(TrainerCallback):
    """Makes the HF Trainer's own checkpoint and resume exact, mid-epoch and with workers.

    Args:
        seed: The seed to follow; by default ``args.seed`` (Trainer seeds with it), unless
            torchrepro was seeded already (``seed_everything``, ``torchrepro run``).

    Raises:
        SeedError: ``seed`` is not an int in [0, 2**64) or a str.
    """

    def __init__(self, seed: SeedLike | None = None) -> None:
        self._seed = None if seed is None else normalize_seed(seed)
        self._rng: RNGState | None = None
        self._check = _resume.check_request()
        self._resuming_from: Path | None = None  # the folder train() resumes from
        _resume.intercept(Trainer, "train", "resume_from_checkpoint", _resume_argument)

    def on_init_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        _resume.follow(self._seed, args.seed, "TrainingArguments(seed=...)")
        if self._check is not None:  # each run of check saves in a folder of its own
            args.output_dir = str(self._check.folder)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._check is not None and self._check.stop_at == state.global_step:
            control.should_save = True
            control.should_training_stop = True

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        saved = _resume.every_rank({})  # on every rank: a collective
        if state.is_world_process_zero:
            folder = _checkpoint_folder(args, state)
            torchrepro_state.save_checkpoint(folder / STATE_FILE, saved)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.global_step == 0:
            return
        folder = self._resuming_from or _checkpoint_folder(args, state)
        path = folder / STATE_FILE
        if args.ignore_data_skip and float(state.epoch or 0) % 1:
            log.warning(
                "torchrepro: resuming at step %d inside epoch %d with ignore_data_skip=True: "
                "Trainer restarts the epoch at its first batch and trains those batches again, "
                "so this run will not end as the uninterrupted one. Leave ignore_data_skip "
                "False for an exact resume (the skipped batches are not loaded).",
                state.global_step,
                int(state.epoch or 0),
            )
        if not path.is_file():
            _resume.say_missing(f"{folder} (expected {STATE_FILE} there)")
            return
        own = _resume.own_rank(torchrepro_state.load_checkpoint(path))
        torchrepro_state.load_state_dict(own)
        self._rng = torchrepro_state.saved_rng(own)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._rng is not None:
            torchrepro_state.restore_rng(self._rng)
            self._rng = None
