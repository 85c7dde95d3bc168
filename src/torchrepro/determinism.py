"""Determinism switches: turn them on at the lowest cost, restore them, and report them.

What this module sets, and why:

- cuDNN deterministic on and cuDNN benchmark off (benchmark autotuning picks kernels by
  timing, and broke repeatability on an H100 even with cuDNN deterministic on);
- ``torch.use_deterministic_algorithms`` (strict, or warn-only);
- ``torch.utils.deterministic.fill_uninitialized_memory`` off: PyTorch turns it on with
  deterministic algorithms, writing NaN into every new ``torch.empty`` buffer, a cost
  that reproducibility does not need;
- ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` where this torch build uses cuBLAS, which reads it
  when its handle is created: setting it after the first CUDA matrix product is too late,
  and is reported;
- ``FLASH_ATTENTION_DETERMINISTIC=1`` for the flash-attn package's backward pass.

``CUDA_LAUNCH_BLOCKING`` is never set: it serialises every kernel and is not needed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from torchrepro import _contract, _flags
from torchrepro._derive import require_bool
from torchrepro._flags import check_mode
from torchrepro.errors import DeterminismError

if TYPE_CHECKING:
    from torchrepro._flags import Mode

__all__ = [
    "DeterminismStatus",
    "check_mode",
    "cublas_needs_workspace_config",
    "determinism_status",
    "deterministic",
    "enable_determinism",
    "restore",
    "settings",
    "snapshot",
    "string_hashing_randomized",
]

log = logging.getLogger("torchrepro")

# Read once at import: the interpreter fixed its string hash seed at start-up, and a
# later change of the variable does nothing for this process (only for its children).
_HASH_SEED_AT_START = os.environ.get(_contract.HASH_SEED)

_cublas_set_late = False


def _cuda_started() -> bool:
    return bool(torch.cuda.is_initialized())  # type: ignore[no-untyped-call]


def _set_deterministic_algorithms(value: bool) -> None:
    torch.use_deterministic_algorithms(
        value, warn_only=torch.is_deterministic_algorithms_warn_only_enabled()
    )


def _set_warn_only(value: bool) -> None:
    torch.use_deterministic_algorithms(
        torch.are_deterministic_algorithms_enabled(), warn_only=value
    )


def _fill() -> bool:
    # absent before torch 2.1
    return bool(getattr(torch.utils.deterministic, "fill_uninitialized_memory", False))


def _set_fill(value: bool) -> None:
    torch.utils.deterministic.fill_uninitialized_memory = value  # type: ignore[attr-defined]


def _set_cudnn_deterministic(value: bool) -> None:
    torch.backends.cudnn.deterministic = value


def _set_cudnn_benchmark(value: bool) -> None:
    torch.backends.cudnn.benchmark = value


def _detops() -> ModuleType | None:
    # The replacements are imported when first asked for: until then none is patched, and
    # a process that never switches determinism on (a DataLoader worker) never loads them.
    return sys.modules.get("torchrepro.detops")


def _replaced() -> bool:
    detops = _detops()
    return detops is not None and bool(detops.patched_ops())


def _replacements() -> tuple[bool, bool]:
    detops = _detops()
    return (False, False) if detops is None else (bool(detops.patched_ops()), detops.forced())


def _set_replacements(value: tuple[bool, bool]) -> None:
    from torchrepro import detops

    patched, force = value
    if patched:
        detops.patch_nondeterministic_ops(force=force)
    else:
        detops.unpatch_nondeterministic_ops()


@dataclass(frozen=True)
class _Setting:
    """How to read one setting of :mod:`torchrepro._flags`, and to save and put it back.

    ``save`` defaults to ``read``; a setting without ``put`` is reported, never changed.
    """

    read: Callable[[], Any]
    put: Callable[[Any], None] | None = None
    save: Callable[[], Any] | None = None


def string_hashing_randomized() -> bool:
    """Whether this interpreter salts ``hash(str)`` per process.

    It does unless ``PYTHONHASHSEED`` was set to an integer before it started.

    Examples:
        >>> isinstance(string_hashing_randomized(), bool)
        True
    """
    if sys.flags.hash_randomization == 0:
        return False
    return _HASH_SEED_AT_START in (None, "", "random")


# The one table of determinism settings, in the vocabulary of torchrepro._flags: snapshot,
# restore, the status and the environment manifest all read it.
_SETTINGS: dict[str, _Setting] = {
    _flags.CUDNN_DETERMINISTIC: _Setting(
        lambda: bool(torch.backends.cudnn.deterministic), _set_cudnn_deterministic
    ),
    _flags.CUDNN_BENCHMARK: _Setting(
        lambda: bool(torch.backends.cudnn.benchmark), _set_cudnn_benchmark
    ),
    _flags.DETERMINISTIC_ALGORITHMS: _Setting(
        torch.are_deterministic_algorithms_enabled, _set_deterministic_algorithms
    ),
    _flags.WARN_ONLY: _Setting(torch.is_deterministic_algorithms_warn_only_enabled, _set_warn_only),
    _flags.FILL_UNINITIALIZED_MEMORY: _Setting(_fill, _set_fill),
    _flags.REPLACED_OPS: _Setting(_replaced, _set_replacements, _replacements),
    _flags.TF32_MATMUL: _Setting(lambda: bool(torch.backends.cuda.matmul.allow_tf32)),
    _flags.TF32_CUDNN: _Setting(lambda: bool(torch.backends.cudnn.allow_tf32)),
    _flags.FLOAT32_MATMUL_PRECISION: _Setting(torch.get_float32_matmul_precision),
    _flags.STRING_HASHING: _Setting(string_hashing_randomized),
}
assert tuple(_SETTINGS) == _flags.NAMES, "every setting of the vocabulary, in its order"


def settings() -> dict[str, Any]:
    """Every determinism setting now, by its :mod:`torchrepro._flags` name (JSON values).

    The environment manifest records this dict as ``env["determinism"]``.

    Examples:
        >>> settings()["cudnn_benchmark"]
        False
    """
    return {name: setting.read() for name, setting in _SETTINGS.items()}


@dataclass(frozen=True)
class Snapshot:
    """Determinism settings and managed environment variables at one moment."""

    flags: dict[str, Any]
    env: dict[str, str | None]


def snapshot() -> Snapshot:
    """Captures every settable setting and managed environment variable, for :func:`restore`.

    Examples:
        >>> saved = snapshot()
        >>> torch.backends.cudnn.benchmark = True
        >>> restore(saved)
        >>> torch.backends.cudnn.benchmark
        False
    """
    return Snapshot(
        flags={
            name: (setting.save or setting.read)()
            for name, setting in _SETTINGS.items()
            if setting.put is not None
        },
        env={name: os.environ.get(name) for name in _contract.MANAGED},
    )


def restore(saved: Snapshot) -> None:
    """Puts back what :func:`snapshot` captured."""
    for name, value in saved.flags.items():
        # Only what changed: torch.use_deterministic_algorithms imports torch._inductor
        # (seconds) even to set the value it already has, and the pytest plugin restores
        # after every test.
        setting = _SETTINGS[name]
        assert setting.put is not None
        if (setting.save or setting.read)() != value:
            setting.put(value)
    for name, env_value in saved.env.items():
        if env_value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = env_value


def cublas_needs_workspace_config() -> bool:
    """Whether this torch build runs cuBLAS, which needs ``CUBLAS_WORKSPACE_CONFIG``."""
    return torch.version.cuda is not None and getattr(torch.version, "hip", None) is None


def set_recipe_flags() -> None:
    """What the common recipe sets: cuDNN deterministic on, cuDNN benchmark off."""
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _set_cublas_workspace() -> None:
    global _cublas_set_late
    if not cublas_needs_workspace_config() or os.environ.get(_contract.CUBLAS):
        return
    os.environ[_contract.CUBLAS] = _contract.CUBLAS_VALUE
    if _cuda_started():
        _cublas_set_late = True
        log.warning(
            "torchrepro: %s was set after CUDA started, so cuBLAS may already run without it "
            "and matrix products may not repeat. Set it before the first CUDA operation "
            "(export %s=%s), or launch with `torchrepro run --deterministic -- CMD`.",
            _contract.CUBLAS,
            _contract.CUBLAS,
            _contract.CUBLAS_VALUE,
        )


def enable_determinism(
    mode: Mode = True, *, fill_uninitialized_memory: bool = False, replace_ops: bool = True
) -> None:
    """Switches on every determinism setting PyTorch has, at the lowest cost.

    Args:
        mode: ``True`` raises on ops with no deterministic kernel; ``"warn"`` only warns.
        fill_uninitialized_memory: Keep PyTorch's NaN fill of new buffers (off by
            default: a cost, not a requirement for repeatability).
        replace_ops: Route the ops that have no deterministic CUDA kernel (adaptive and
            average pooling, interpolation, padding, NLL loss 2d, cumsum, bincount,
            histc, scatter_reduce) to torchrepro's deterministic replacements, so strict
            mode does not raise on them (see :mod:`torchrepro.detops`). Calls on the CPU
            and with deterministic algorithms off still go to PyTorch's own ops.

    Raises:
        DeterminismError: ``mode`` is not ``True`` or ``"warn"``.

    Examples:
        >>> enable_determinism("warn")
        >>> torch.are_deterministic_algorithms_enabled()
        True
    """
    if check_mode(mode) is False:
        raise DeterminismError(
            "enable_determinism(False) would switch nothing on; got mode=False, expected "
            "True or 'warn'. To leave the flags as they are, do not call it; to switch "
            "determinism on only for a block and restore the flags after it, use "
            "`with torchrepro.deterministic():`."
        )
    # Every argument is checked before any flag changes: nothing is half applied.
    require_bool(fill_uninitialized_memory, "fill_uninitialized_memory", DeterminismError)
    require_bool(replace_ops, "replace_ops", DeterminismError)
    set_recipe_flags()
    _set_cublas_workspace()
    os.environ.setdefault(_contract.FLASH_ATTENTION, "1")
    torch.use_deterministic_algorithms(True, warn_only=mode == "warn")
    _set_fill(fill_uninitialized_memory)
    if replace_ops:
        from torchrepro import detops

        detops.patch_nondeterministic_ops()


@contextlib.contextmanager
def deterministic(
    mode: Mode = True, *, fill_uninitialized_memory: bool = False, replace_ops: bool = True
) -> Iterator[None]:
    """Determinism switched on inside the block, every flag and variable restored after.

    Examples:
        >>> with deterministic():
        ...     torch.are_deterministic_algorithms_enabled()
        True
    """
    check_mode(mode)
    saved = snapshot()
    try:
        enable_determinism(
            mode, fill_uninitialized_memory=fill_uninitialized_memory, replace_ops=replace_ops
        )
        yield
    finally:
        restore(saved)


@dataclass(frozen=True)
class DeterminismStatus:
    """Every setting that decides whether a training repeats, and what is not controlled.

    The first ten fields are the settings of :func:`settings`, under the same names.
    """

    cudnn_deterministic: bool
    cudnn_benchmark: bool
    deterministic_algorithms: bool
    warn_only: bool
    fill_uninitialized_memory: bool
    replaced_ops: bool
    tf32_matmul: bool
    tf32_cudnn: bool
    float32_matmul_precision: str
    string_hashing_randomized: bool
    cublas_workspace_config: str | None
    cublas_needs_workspace_config: bool
    cublas_set_after_cuda_started: bool
    cuda_initialized: bool
    sdpa_backends: dict[str, bool]
    num_threads: int
    num_interop_threads: int
    python_hash_seed: str | None
    uncontrolled: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The status as a JSON-serialisable dict."""
        return asdict(self)

    def __str__(self) -> str:
        fields = self.as_dict()
        uncontrolled = fields.pop("uncontrolled")
        lines = [f"{name}: {value}" for name, value in fields.items()]
        lines.append("uncontrolled:" + ("" if uncontrolled else " nothing found"))
        lines += [f"  - {item}" for item in uncontrolled]
        return "\n".join(lines)


def _sdpa_backends() -> dict[str, bool]:
    backends = {}
    for name in ("flash", "mem_efficient", "math", "cudnn"):
        probe = getattr(torch.backends.cuda, f"{name}_sdp_enabled", None)
        if probe is not None:
            backends[name] = bool(probe())
    return backends


def _uncontrolled(status: dict[str, Any]) -> list[str]:
    found = []
    if status["string_hashing_randomized"]:
        found.append(
            "str hashing is salted in this interpreter (PYTHONHASHSEED was not set at start): "
            "set and dict-of-str order changes per process; launch with `torchrepro run`"
        )
    if status["cudnn_benchmark"]:
        found.append("cuDNN benchmark is on: kernels are chosen by timing and can change per run")
    if not status["deterministic_algorithms"]:
        found.append(
            "deterministic algorithms are off: atomics-based CUDA kernels (index_add_, "
            "scatter_add_, some backward passes) can differ per run; use deterministic=True"
        )
    elif status["warn_only"]:
        found.append("ops with no deterministic kernel only warn (warn-only mode)")
    if status["cublas_needs_workspace_config"] and not status["cublas_workspace_config"]:
        found.append(f"{_contract.CUBLAS} is not set: cuBLAS matrix products may not repeat")
    if status["cublas_set_after_cuda_started"]:
        found.append(f"{_contract.CUBLAS} was set after CUDA started: cuBLAS may ignore it")
    found.append(
        f"CPU results can depend on the thread count ({status['num_threads']} now): "
        "compare runs with the same torch.get_num_threads()"
    )
    return found


def determinism_status() -> DeterminismStatus:
    """Reports every setting relevant to repeatability, and what is still uncontrolled.

    Reading the status never initialises CUDA.

    Examples:
        >>> print(determinism_status().cudnn_benchmark)
        False
    """
    status: dict[str, Any] = dict(
        **settings(),
        cublas_workspace_config=os.environ.get(_contract.CUBLAS),
        cublas_needs_workspace_config=cublas_needs_workspace_config(),
        cublas_set_after_cuda_started=_cublas_set_late,
        cuda_initialized=_cuda_started(),
        sdpa_backends=_sdpa_backends(),
        num_threads=torch.get_num_threads(),
        num_interop_threads=torch.get_num_interop_threads(),
        python_hash_seed=os.environ.get(_contract.HASH_SEED),
    )
    return DeterminismStatus(**status, uncontrolled=_uncontrolled(status))
