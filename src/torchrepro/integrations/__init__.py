"""Exact resume inside the frameworks: one callback each, through the framework's own checkpoints.

- :mod:`torchrepro.integrations.lightning`: ``TorchRepro``, a Lightning callback.
- :mod:`torchrepro.integrations.transformers`: ``TorchReproCallback``, an HF Trainer callback.
- :mod:`torchrepro.integrations.accelerate`: ``TorchReproState``, registered with
  ``Accelerator.register_for_checkpointing``.

Each one follows the seed the framework was seeded with (the generators are left as the
framework seeded them), seeds and tracks the training loader, and stores
:func:`torchrepro.state_dict` (every rank's, in plain data) in the framework's checkpoint;
on resume it puts the loader positions back before the loader is first iterated and the
random streams right before training goes on. Importing this package imports no framework.
"""
