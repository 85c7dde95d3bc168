"""Test helpers: prove that a function gives bitwise the same result in fresh processes.

Examples:
    >>> import functools
    >>> from torchrepro.testing import assert_reproducible
    >>> # fn is sent to fresh processes by name: a module-level function, or a partial of one
    >>> out = assert_reproducible(functools.partial(torch.randn, 8, 4), seed=11)
    >>> out.shape                           # AssertionError had two runs differed
    torch.Size([8, 4])
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import struct
import traceback
from collections.abc import Callable, Iterator, Mapping
from multiprocessing.connection import Connection
from typing import Any, TypeVar, cast

import numpy as np
import torch

from torchrepro import seeding
from torchrepro._derive import SeedLike, normalize_seed
from torchrepro._flags import check_mode
from torchrepro.errors import TorchReproError
from torchrepro.launch import child_environment

T = TypeVar("T")


def _run_seeded(
    fn: Callable[[], Any], seed: int, deterministic: bool | str | None, conn: Connection
) -> None:
    """Entry point of each fresh process: seed, run ``fn``, send back the pickled result."""
    try:
        seeding.seed_everything(seed, deterministic=deterministic)
        outcome: tuple[str, Any] = ("ok", pickle.dumps(fn()))
    except BaseException:  # sent to the parent, which raises it with this traceback
        outcome = ("error", traceback.format_exc())
    # The result goes as plain pickle bytes, not through the Connection's pickler: torch
    # registers one there that shares tensors through file descriptors of this process.
    conn.send(outcome)
    conn.close()


@contextlib.contextmanager
def _environ(updates: Mapping[str, str]) -> Iterator[None]:
    # Spawned processes inherit the environment current at their start.
    saved = {name: os.environ.get(name) for name in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run_all(
    fn: Callable[[], Any], runs: int, seed: int, deterministic: bool | str | None
) -> list[Any]:
    context = multiprocessing.get_context("spawn")
    # The seed, and the hash seed fixed before each interpreter starts (so set and
    # dict-of-str order repeats too); the processes seed themselves in _run_seeded.
    env = child_environment(seed, base={}, bootstrap=False)
    processes = []
    with _environ(env):
        for _ in range(runs):
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(target=_run_seeded, args=(fn, seed, deterministic, sender))
            process.start()
            sender.close()  # so that recv() sees EOF if the child dies
            processes.append((process, receiver))
    results = []
    failures = []
    for index, (process, receiver) in enumerate(processes, start=1):
        try:
            status, payload = receiver.recv()
        except EOFError:
            status, payload = "error", "it ended without sending a result (see its stderr)"
        process.join()
        if status == "ok":
            results.append(pickle.loads(payload))
        else:
            failures.append(f"run {index} (exit code {process.exitcode}):\n{payload}")
    if failures:
        raise TorchReproError(
            f"assert_reproducible: {len(failures)} of {runs} runs of {_name(fn)} failed, so "
            "nothing could be compared. Fix the error below (it happened in a fresh process, "
            "seeded with seed_everything).\n" + "\n".join(failures)
        )
    return results


def _name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _bits(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    flat = np.ascontiguousarray(values).reshape(-1)
    return flat.view(np.uint8).reshape(flat.size, flat.dtype.itemsize)


def _first_difference_in_array(
    first: np.ndarray[Any, Any], other: np.ndarray[Any, Any]
) -> str | None:
    """The first difference, as text to append to the output's path, or None."""
    if first.dtype != other.dtype:
        return f": dtype {first.dtype} vs {other.dtype}"
    if first.shape != other.shape:
        return f": shape {first.shape} vs {other.shape}"
    if first.dtype.hasobject:
        raise TorchReproError(
            "assert_reproducible compares arrays bitwise and cannot compare object arrays; "
            "return numeric arrays, tensors, numbers or strings."
        )
    differs = (_bits(first) != _bits(other)).any(axis=1)
    count = int(differs.sum())
    if count == 0:
        return None
    flat = int(np.argmax(differs))
    index = ", ".join(str(int(i)) for i in np.unravel_index(flat, first.shape))
    a, b = first.reshape(-1)[flat].item(), other.reshape(-1)[flat].item()
    where = f"[{index}]" if first.shape else ""
    return f"{where}: {a!r} vs {b!r} ({count} of {first.size} elements differ)"


def _tensor_as_array(tensor: torch.Tensor) -> np.ndarray[Any, Any]:
    tensor = tensor.detach().cpu()
    if tensor.is_sparse or tensor.is_quantized:
        raise TorchReproError(
            f"assert_reproducible compares strided tensors; got layout {tensor.layout}, "
            f"quantized={tensor.is_quantized}. Return tensor.to_dense() or dequantize() instead."
        )
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: compare its bits
        return tensor.view(torch.int16).numpy()
    return tensor.resolve_conj().resolve_neg().numpy()


def _same_float(a: float, b: float) -> bool:
    return struct.pack("<d", a) == struct.pack("<d", b)


def _first_difference(first: Any, other: Any, path: str) -> str | None:
    """Where ``other`` first differs from ``first``, as text, or None when bitwise equal."""
    if type(first) is not type(other):
        return f"{path}: type {type(first).__name__} vs {type(other).__name__}"
    if isinstance(first, torch.Tensor):
        if first.dtype != other.dtype:
            return f"{path}: dtype {first.dtype} vs {other.dtype}"
        found = _first_difference_in_array(_tensor_as_array(first), _tensor_as_array(other))
        return None if found is None else path + found
    if isinstance(first, np.ndarray | np.generic):
        found = _first_difference_in_array(np.asarray(first), np.asarray(other))
        return None if found is None else path + found
    if isinstance(first, float):
        found = None if _same_float(first, other) else f"{first!r} vs {other!r}"
    elif isinstance(first, complex):
        same = _same_float(first.real, other.real) and _same_float(first.imag, other.imag)
        found = None if same else f"{first!r} vs {other!r}"
    elif isinstance(first, list | tuple):
        if len(first) != len(other):
            return f"{path}: length {len(first)} vs {len(other)}"
        for index, (a, b) in enumerate(zip(first, other, strict=True)):
            inner = _first_difference(a, b, f"{path}[{index}]")
            if inner is not None:
                return inner
        return None
    elif isinstance(first, dict):
        if list(first) != list(other):
            return f"{path}: keys {list(first)!r} vs {list(other)!r}"
        for key in first:
            inner = _first_difference(first[key], other[key], f"{path}[{key!r}]")
            if inner is not None:
                return inner
        return None
    elif first is None or isinstance(first, int | str | bytes | bool):
        found = None if first == other else f"{first!r} vs {other!r}"
    else:
        raise TorchReproError(
            f"assert_reproducible cannot compare a {type(first).__name__} at {path}; it "
            "compares tensors, numpy arrays, numbers, strings, bytes and None, nested in "
            "lists, tuples and dicts. Return those (e.g. model.state_dict())."
        )
    return None if found is None else f"{path}: {found}"


def assert_reproducible(
    fn: Callable[[], T],
    runs: int = 2,
    *,
    seed: SeedLike | None = None,
    deterministic: bool | str | None = None,
) -> T:
    """Runs ``fn`` in ``runs`` fresh processes, seeded alike, and checks the results match.

    Each run is a new Python process (multiprocessing's spawn), so nothing carries over
    from this one: it calls ``seed_everything(seed, deterministic=deterministic)`` with
    ``PYTHONHASHSEED`` fixed at start-up, then ``fn()``. The results are compared bitwise
    (``-0.0`` differs from ``0.0``; a NaN equals a NaN with the same bits), tensors and
    arrays also by dtype and shape.

    Args:
        fn: A function of no arguments that pickle can send by reference: defined at
            module level (or a ``functools.partial`` of one), not a lambda or a closure.
            It returns tensors, numpy arrays, numbers, strings, bytes or None, possibly
            nested in lists, tuples and dicts (a ``state_dict`` works).
        runs: How many processes to compare, at least 2. They run at the same time.
        seed: The root seed of every run. ``None``: ``TORCHREPRO_SEED`` if set (the
            pytest plugin sets it to the test's seed), else a fresh seed.
        deterministic: Passed to ``seed_everything`` in each run.

    Returns:
        The first run's result.

    Raises:
        AssertionError: Two runs differ; the message names the run, the output (a path
            such as ``result['weight']``) and the first element that differs.
        TorchReproError: ``fn`` cannot be sent to another process, a run raised (its
            traceback is in the message), or a result cannot be compared.

    Examples:
        >>> import functools
        >>> assert_reproducible(functools.partial(torch.rand, 2), runs=3, seed=11).shape
        torch.Size([2])
    """
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 2:
        raise TorchReproError(
            f"runs must be an int of at least 2 (one run proves nothing); got {runs!r}."
        )
    try:
        pickle.dumps(fn)
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        raise TorchReproError(
            f"assert_reproducible runs fn in fresh processes and must send it there by "
            f"name, but {_name(fn)} cannot be pickled ({error}). Define it at module "
            "level (or pass functools.partial of a module-level function)."
        ) from error
    if deterministic is not None:
        check_mode(deterministic)
    root = normalize_seed(seed) if seed is not None else seeding.resolve_seed(None)
    results = _run_all(fn, runs, root, deterministic)
    for index, result in enumerate(results[1:], start=2):
        found = _first_difference(results[0], result, "result")
        if found is not None:
            raise AssertionError(
                f"{_name(fn)} is not reproducible: run {index} differs from run 1 at "
                f"{found} (seed {root}, {runs} fresh processes)."
            )
    return cast(T, results[0])
