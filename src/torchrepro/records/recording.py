"""Recording in this process: :func:`record` starts the one recording a process has,
:func:`log` and :func:`step` speak to it, :func:`start_from_env` starts it for ``torchrepro
run`` and ``check``. The :class:`~torchrepro.records.writer.Recorder` does the work.

Examples:
    >>> active() is None
    True
    >>> with record("run.jsonl") as recorder:
    ...     active() is recorder
    True
    >>> log(loss=0.5)  # no recording now: nothing taken
    False
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from torchrepro import _contract
from torchrepro._derive import require_bool
from torchrepro.digests import resolve_algorithm
from torchrepro.errors import FingerprintError, RecordError
from torchrepro.records.format import BATCH, GRADS, OPTIONS, RNG
from torchrepro.records.writer import LogValue, Recorder

__all__ = ["active", "log", "record", "start_from_env", "step"]

_active: Recorder | None = None


def active() -> Recorder | None:
    """The recording of this process, or None when none is open."""
    return _active if _active is not None and not _active.closed else None


def record(
    path: str | os.PathLike[str],
    *,
    grads: bool = False,
    batch: bool = False,
    rng: bool = False,
    algorithm: str | None = None,
) -> Recorder:
    """Start recording every training step of this process to ``path``.

    Steps are optimizer steps, else backward passes followed by a hand-written update, else
    the calls of :func:`step` (the module docstring says exactly). Use it as a context
    manager, or call it and ``close()`` the result (it is also closed at interpreter exit).
    The file is overwritten; :mod:`torchrepro.records.format` describes it.

    Args:
        path: The record file (JSON lines). With WORLD_SIZE > 1 the rank is inserted:
            ``run.jsonl`` -> ``run.rank{r}.jsonl``.
        grads: Also digest each parameter's gradient.
        batch: Also digest the batches the data pipeline yielded for each step, labelled
            by place and shape (:mod:`torchrepro.records._batches`); with no DataLoader,
            the inputs of the outermost module calls that own parameters.
        rng: Also digest, after each step, the state of every RNG source in use: Python,
            numpy, torch, CUDA/MPS/XPU once the training uses them, and the generators
            registered with :func:`torchrepro.register_generator`.
        algorithm: Digest algorithm (see :func:`torchrepro.fingerprint`); ``"lanes"`` on a
            CPU run makes its record comparable with a CUDA run's.

    Returns:
        The running :class:`Recorder`.

    Raises:
        RecordError: A recording is already active in this process; an option is not a
            bool or the algorithm unknown; or ``path`` is a folder, or in a folder this
            process cannot write in. Later I/O errors (a full disk) never stop the
            training: the recorder stops, warns once, and marks the record incomplete
            (:func:`~torchrepro.records.files.read_incomplete`).

    Examples:
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> with record("run.jsonl", grads=True) as recorder:
        ...     for _ in range(2):
        ...         opt.zero_grad(); model(torch.ones(1, 2)).sum().backward(); opt.step()
        >>> recorder.entries, recorder.path.read_text().count("\\n")
        (2, 3)
    """
    global _active
    current = active()
    if current is not None:
        raise RecordError(
            f"a recording to {str(current.path)!r} is already active; expected none. "
            "Close it (recorder.close() or leave its with-block) before starting another."
        )
    _check_arguments(path, {"grads": grads, "batch": batch, "rng": rng}, algorithm)
    _active = Recorder(path, grads=grads, batch=batch, rng=rng, algorithm=algorithm)
    return _active


def _check_arguments(
    path: str | os.PathLike[str], options: dict[str, object], algorithm: str | None
) -> None:
    """Everything :func:`record` is given, checked at the call, not at the first step."""
    for name, value in options.items():
        require_bool(value, name, RecordError)
    if algorithm is not None:
        try:
            resolve_algorithm(algorithm, [])
        except FingerprintError as error:
            raise RecordError(str(error)) from None
    target = Path(path)
    folder = next((p for p in target.parents if p.exists()), Path("."))
    if target.is_dir():
        problem = "it is a folder"
    elif not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        problem = f"{str(folder)!r} is not a folder this process can write in"
    else:
        return
    raise RecordError(
        f"cannot record to {str(path)!r}: {problem}; expected a file path in a writable "
        "folder. Pass another path."
    )


def log(**values: LogValue) -> bool:
    """Attach values (a loss, a metric) to the entry of the coming step.

    Call it before ``optimizer.step()`` (or :func:`step`). Tensors of one element are
    stored as numbers (read when the entry is written, so no extra device sync); larger
    tensors as digests. Values logged after the last step of a recording are not written.

    Returns:
        True if a recording took the values, False if none is active (then it does nothing,
        so training scripts may call it unconditionally).

    Raises:
        RecordError: for a value that is not a number, string or tensor.

    Examples:
        >>> log(loss=0.5)  # no recording active: nothing happens
        False
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> with record("run.jsonl"):
        ...     loss = model(torch.ones(1, 2)).sum()
        ...     log(loss=loss, lr=0.1)
        ...     opt.zero_grad(); loss.backward(); opt.step()
        True
        >>> from torchrepro.records import read_record
        >>> sorted(read_record("run.jsonl").entries[0]["log"])
        ['loss', 'lr']
    """
    for key, value in values.items():
        if not isinstance(value, (int, float, bool, str, torch.Tensor)):
            raise RecordError(
                f"log({key}=...) got {type(value).__name__}; expected a number, string or "
                "tensor. Pass e.g. loss.item() or the loss tensor itself."
            )
    current = active()
    if current is None:
        return False
    current.log(values)
    return True


def step() -> bool:
    """Mark the end of a training step: the recording writes its entry now.

    For a loop the recorder cannot see by itself: no optimizer and no backward pass (an
    update computed in closed form, an evolution strategy), or steps of your own choosing.
    The entry holds the parameters of the modules that ran forward (by module path), their
    gradients if recorded, the batch, the RNG digests and the values given to :func:`log`
    since the last step (log the tensors you update without a module). If an optimizer
    step or a backward pass followed by a hand-written update already wrote this step's
    entry (since the last call), nothing more is written: no step is written twice.

    Returns:
        True if a recording took the step, False if none is active (then it does nothing,
        so training scripts may call it unconditionally).

    Examples:
        >>> step()  # no recording active: nothing happens
        False
        >>> model = torch.nn.Linear(2, 1)
        >>> with record("run.jsonl") as recorder, torch.no_grad():
        ...     for _ in range(3):
        ...         _ = model.weight.mul_(model(torch.ones(1, 2)).tanh())
        ...         _ = step()
        >>> recorder.entries
        3
        >>> from torchrepro.records import read_record
        >>> entry = read_record("run.jsonl").entries[2]
        >>> entry["step"], entry["optimizer"], sorted(entry["params"])
        (2, None, ['bias', 'weight'])
    """
    current = active()
    if current is None:
        return False
    current.mark_step()
    return True


def start_from_env() -> Recorder | None:
    """Start recording if ``TORCHREPRO_RECORD`` names a file; the ``run`` bootstrap calls it.

    ``TORCHREPRO_RECORD_WITH`` is a comma list of options to switch on (``grads,batch,rng``)
    and ``TORCHREPRO_RECORD_ALGORITHM`` picks the digest algorithm.

    Returns:
        The Recorder (closed at interpreter exit), or None when the variable is unset.

    Examples:
        >>> os.environ["TORCHREPRO_RECORD"] = "run.jsonl"
        >>> os.environ["TORCHREPRO_RECORD_WITH"] = "grads,rng"
        >>> recorder = start_from_env()
        >>> recorder, recorder.grads, recorder.batch
        (<Recorder 'run.jsonl' recording, 0 entries>, True, False)
        >>> recorder.close()
    """
    path = os.environ.get(_contract.RECORD)
    if not path:
        return None
    raw = os.environ.get(_contract.RECORD_WITH, "")
    chosen = {item.strip() for item in raw.split(",") if item.strip()}
    unknown = chosen - set(OPTIONS)
    if unknown:
        raise RecordError(
            f"{_contract.RECORD_WITH}={raw!r} names {sorted(unknown)}; expected a comma list "
            f"of {list(OPTIONS)}. Fix the variable or unset it."
        )
    return record(
        path,
        grads=GRADS in chosen,
        batch=BATCH in chosen,
        rng=RNG in chosen,
        algorithm=os.environ.get(_contract.RECORD_ALGORITHM) or None,
    )
