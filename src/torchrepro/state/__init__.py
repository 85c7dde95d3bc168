"""Exact resume: capture and restore every random stream and loader position, without pickle.

Everything saved here is *plain data*: tensors, ints, floats, strs, lists and dicts.
``torch.load(path, weights_only=True)`` reads it with no allow-list, so a checkpoint never
needs ``weights_only=False`` (which runs any code a tampered file holds). Every state
carries a schema version and a SHA-256 checksum of its content; a restore checks all of
it, every source included, before it applies anything.

Order at resume: ``seed_everything(seed)``, build the model, optimizer and loaders as the
saved run did, then ``load_state_dict``, then iterate. (Loaders created after
``load_state_dict`` still take their saved position; what must not happen is iterating a
loader before it.)

Examples:
    >>> torchrepro.seed_everything(11)
    11
    >>> model = torch.nn.Linear(4, 2)
    >>> checkpoint = {"model": model.state_dict(), "torchrepro": torchrepro.state_dict()}
    >>> torchrepro.save_checkpoint("ckpt.pt", checkpoint)
    PosixPath('ckpt.pt')
    >>> after_save = torch.rand(3)
    >>> # ... later, in a new process, after seed_everything and creating the loaders:
    >>> checkpoint = torchrepro.load_checkpoint("ckpt.pt")
    >>> model.load_state_dict(checkpoint["model"])
    <All keys matched successfully>
    >>> torchrepro.load_state_dict(checkpoint["torchrepro"])
    >>> torch.equal(torch.rand(3), after_save)
    True
"""

from __future__ import annotations

from torchrepro.state._container import SCHEMA_VERSION
from torchrepro.state.rng import (
    RNGState,
    capture_rng,
    load_rng,
    register_generator,
    restore_rng,
    save_rng,
)
from torchrepro.state.training import (
    load_checkpoint,
    load_state_dict,
    save_checkpoint,
    saved_rng,
    state_dict,
)

__all__ = [
    "SCHEMA_VERSION",
    "RNGState",
    "capture_rng",
    "load_checkpoint",
    "load_rng",
    "load_state_dict",
    "register_generator",
    "restore_rng",
    "save_checkpoint",
    "save_rng",
    "saved_rng",
    "state_dict",
]
