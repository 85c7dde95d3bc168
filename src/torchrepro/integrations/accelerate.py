"""Exact resume with accelerate: ``register(accelerator)``, then ``save_state`` / ``load_state``.

accelerate's ``save_state`` and ``load_state`` keep weights, optimizer and the global random
streams; ``skip_first_batches`` skips the trained batches of an interrupted epoch without
loading them. What they cannot put back is the augmentation and random collation of the
batches after them. ``register(accelerator)``, called before ``accelerator.prepare``:

- follows the seed (``seed``, else torchrepro's, else ``TORCHREPRO_SEED``), leaving the
  generators as ``accelerate.utils.set_seed`` seeded them, so each batch of the loaders
  created from then on is loaded under streams of its own (:mod:`torchrepro.data.batches`);
- registers a ``save_state`` hook that writes every rank's :func:`torchrepro.state_dict` to
  ``torchrepro.pt`` in the state folder (from the main process), and a ``load_state`` hook
  that reads it, checks it and restores it, registered generators included.

torchrepro does not go through ``register_for_checkpointing``: accelerate reads those files
with ``weights_only=False``, which runs any code a tampered file holds.

Examples:
    >>> from accelerate import Accelerator
    >>> from torchrepro.integrations.accelerate import register
    >>> register(Accelerator(cpu=True), seed=42)
    42
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accelerate import Accelerator

from torchrepro import state
from torchrepro._derive import SeedLike, normalize_seed
from torchrepro.integrations import _resume

STATE_FILE = "torchrepro.pt"
"""The file ``save_state`` writes beside accelerate's own."""


def register(accelerator: Accelerator, seed: SeedLike | None = None) -> int:
    """Makes ``accelerator.save_state`` / ``load_state`` carry torchrepro's state too.

    Call it before ``accelerator.prepare`` (which re-creates the loaders).

    Args:
        accelerator: The run's ``Accelerator``.
        seed: The seed to follow (the one given to ``set_seed``); by default torchrepro's,
            else ``TORCHREPRO_SEED``.

    Returns:
        The seed followed.

    Raises:
        SeedError: ``seed`` is not an int in [0, 2**64) or a str, or no seed is set.
    """
    root = _resume.follow(
        None if seed is None else normalize_seed(seed), None, "register(accelerator, seed=...)"
    )

    def save(models: list[Any], weights: list[Any], output_dir: str) -> None:
        saved = _resume.every_rank({})  # on every process: a collective
        if accelerator.is_main_process:
            state.save_checkpoint(Path(output_dir) / STATE_FILE, saved)

    def load(models: list[Any], input_dir: str) -> None:
        path = Path(input_dir) / STATE_FILE
        if not path.is_file():
            _resume.say_missing(f"{input_dir} (expected {STATE_FILE} there)")
            return
        state.load_state_dict(_resume.own_rank(state.load_checkpoint(path)))

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)
    return root
