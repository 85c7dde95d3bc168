"""Exact resume in Lightning: ``callbacks=[TorchRepro()]``, then Lightning's own resume.

Lightning's ``trainer.fit(..., ckpt_path=...)`` restores weights, optimizer and loop
counters, but not the random streams, and it restarts an interrupted epoch's data at its
first batch. With the callback:

- at ``setup`` it follows the seed ``pl.seed_everything`` set (the generators stay as
  Lightning seeded them) and seeds and tracks the training loader, also one created
  before the Trainer (a loader with a sampler of the user's is named in a warning);
- ``on_save_checkpoint`` stores every rank's :func:`torchrepro.state_dict` under
  ``checkpoint["torchrepro"]``: the RNG states and the loader's position counted in the
  batches Lightning trained on (it fetches one ahead);
- ``on_load_checkpoint`` puts the loader positions back before Lightning first iterates
  the loader, so the resumed epoch goes on at its next batch without loading the ones
  before it; ``on_train_start`` puts the random streams back, after the sanity check
  and the model's set-up.

Each batch is loaded under streams of its own (:mod:`torchrepro.data.batches`), so worker
augmentation does not depend on where the epoch started.

Under ``torchrepro check --resume-at K`` the callback stops the run after step K with
``trainer.save_checkpoint`` (then ``trainer.should_stop``), and the resumed run's
``trainer.fit`` gets that checkpoint as ``ckpt_path``: the check goes through Lightning's
own save and resume.

Examples:
    >>> import pytorch_lightning as pl
    >>> from torchrepro.integrations.lightning import TorchRepro
    >>> trainer = pl.Trainer(callbacks=[TorchRepro()], logger=False, enable_progress_bar=False)
    >>> [type(callback).__name__ for callback in trainer.callbacks][:1]
    ['TorchRepro']
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities.types import STEP_OUTPUT
from torch.utils.data import DataLoader

from torchrepro import data, state
from torchrepro._derive import SeedLike, normalize_seed
from torchrepro.integrations import _resume
from torchrepro.state import RNGState

CHECK_CHECKPOINT = "lightning.ckpt"
"""The checkpoint a run stopped by ``check --resume-at`` leaves in its folder."""


def _loaders(value: object) -> list[DataLoader[Any]]:
    """The DataLoaders in what ``fit`` was given or the Trainer holds (lists, dicts, combined)."""
    if isinstance(value, DataLoader):
        return [value]
    flattened = getattr(value, "flattened", None)  # a CombinedLoader
    if isinstance(flattened, list):
        return [loader for item in flattened for loader in _loaders(item)]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [loader for item in value for loader in _loaders(item)]
    return []


def _checkpoint_of_check(trainer: pl.Trainer, ckpt_path: object) -> object:
    """``fit``'s ``ckpt_path``: the stopped run's checkpoint when check resumes this run."""
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        check = getattr(callback, "_check", None) if isinstance(callback, TorchRepro) else None
        if ckpt_path is None and check is not None and check.resume:
            return str(check.folder / CHECK_CHECKPOINT)
    return ckpt_path


class TorchRepro(pl.Callback):
    """Makes Lightning's own checkpoint and resume exact, mid-epoch and with workers.

    Args:
        seed: The seed to follow; by default the one ``pl.seed_everything`` set (or
            torchrepro's, or ``TORCHREPRO_SEED``).

    Raises:
        SeedError: ``seed`` is not an int in [0, 2**64) or a str (here); no seed is set
            at all (when training starts).
    """

    def __init__(self, seed: SeedLike | None = None) -> None:
        self._seed = None if seed is None else normalize_seed(seed)
        self._rng: RNGState | None = None
        self._check = _resume.check_request()
        if self._check is not None and self._check.resume:
            _resume.intercept(pl.Trainer, "fit", "ckpt_path", _checkpoint_of_check)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        framework_seed = _resume.seed_from_env("PL_GLOBAL_SEED")
        _resume.follow(self._seed, framework_seed, "pl.seed_everything(seed)")
        # A loader passed to fit was created before this callback could seed it.
        given = getattr(getattr(trainer.fit_loop, "_data_source", None), "instance", None)
        for loader in _loaders(given):
            data.adopt_loader(loader)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning has fetched the next batch already; the position is the trained ones.
        trained = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        per_epoch = trainer.num_training_batches
        loaders = _loaders(trainer.train_dataloader)
        consumed = {loader: trained if trained < per_epoch else len(loader) for loader in loaders}
        checkpoint[_resume.KEY] = _resume.every_rank(consumed)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if _resume.KEY not in checkpoint:
            _resume.say_missing("the Lightning checkpoint")
            return
        own = _resume.own_rank(checkpoint[_resume.KEY])
        state.load_state_dict(own)
        self._rng = state.saved_rng(own)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _resume.say_untracked(_loaders(trainer.train_dataloader))
        if self._rng is not None:
            state.restore_rng(self._rng)
            self._rng = None

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: STEP_OUTPUT,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._check is not None and self._check.stop_at == trainer.global_step:
            trainer.save_checkpoint(self._check.folder / CHECK_CHECKPOINT)
            trainer.should_stop = True
