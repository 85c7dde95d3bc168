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
from typing import Any, Literal

import torch

from torchrepro import detops
from torchrepro.errors import DeterminismError

log = logging.getLogger("torchrepro")

Mode = bool | Literal["warn"]
"""``True`` (strict deterministic algorithms) or ``"warn"`` (warn-only)."""

CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_VALUE = ":4096:8"
FLASH_ATTENTION_ENV = "FLASH_ATTENTION_DETERMINISTIC"
HASH_SEED_ENV = "PYTHONHASHSEED"

# Environment variables torchrepro may change; isolation and restore cover exactly these.
MANAGED_ENV = ("TORCHREPRO_SEED", HASH_SEED_ENV, CUBLAS_ENV, FLASH_ATTENTION_ENV)

# Read once at import: the interpreter fixed its string hash seed at start-up, and a
# later change of the variable does nothing for this process (only for its children).
_HASH_SEED_AT_START = os.environ.get(HASH_SEED_ENV)

_cublas_set_late = False


def _cuda_started() -> bool:
    return bool(torch.cuda.is_initialized())  # type: ignore[no-untyped-call]


def _set_deterministic_algorithms(value: tuple[bool, bool]) -> None:
    enabled, warn_only = value
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def _set_fill(value: bool) -> None:
    torch.utils.deterministic.fill_uninitialized_memory = value  # type: ignore[attr-defined]


def _set_cudnn_deterministic(value: bool) -> None:
    torch.backends.cudnn.deterministic = value


def _set_cudnn_benchmark(value: bool) -> None:
    torch.backends.cudnn.benchmark = value


def _replacements() -> tuple[bool, bool]:
    return bool(detops.patched_ops()), detops.forced()


def _set_replacements(value: tuple[bool, bool]) -> None:
    patched, force = value
    if patched:
        detops.patch_nondeterministic_ops(force=force)
    else:
        detops.unpatch_nondeterministic_ops()


# name -> (get, set): every flag the switches touch, snapshot and restored as one.
_FLAGS: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {
    "cudnn_deterministic": (lambda: torch.backends.cudnn.deterministic, _set_cudnn_deterministic),
    "cudnn_benchmark": (lambda: torch.backends.cudnn.benchmark, _set_cudnn_benchmark),
    "deterministic_algorithms": (
        lambda: (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        ),
        _set_deterministic_algorithms,
    ),
    "fill_uninitialized_memory": (
        lambda: torch.utils.deterministic.fill_uninitialized_memory,  # type: ignore[attr-defined]
        _set_fill,
    ),
    "replaced_ops": (_replacements, _set_replacements),
}


@dataclass(frozen=True)
class Snapshot:
    """Determinism flags and managed environment variables at one moment."""

    flags: dict[str, Any]
    env: dict[str, str | None]


def snapshot() -> Snapshot:
    """Captures every flag and managed environment variable, for :func:`restore`."""
    return Snapshot(
        flags={name: get() for name, (get, _) in _FLAGS.items()},
        env={name: os.environ.get(name) for name in MANAGED_ENV},
    )


def restore(saved: Snapshot) -> None:
    """Puts back what :func:`snapshot` captured."""
    for name, value in saved.flags.items():
        # Only what changed: torch.use_deterministic_algorithms imports torch._inductor
        # (seconds) even to set the value it already has, and the pytest plugin restores
        # after every test.
        get, put = _FLAGS[name]
        if get() != value:
            put(value)
    for name, env_value in saved.env.items():
        if env_value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = env_value


def check_mode(mode: object) -> Mode:
    """Validates a determinism mode: ``True``, ``False`` or ``"warn"``.

    Raises:
        DeterminismError: Anything else.
    """
    if mode is True or mode is False or mode == "warn":
        return mode
    raise DeterminismError(
        f"deterministic must be True, False, None or 'warn'; got {mode!r}. "
        "Pass True for strict deterministic algorithms, 'warn' to only warn."
    )


def cublas_needs_workspace_config() -> bool:
    """Whether this torch build runs cuBLAS, which needs ``CUBLAS_WORKSPACE_CONFIG``."""
    return torch.version.cuda is not None and getattr(torch.version, "hip", None) is None


def string_hashing_randomized() -> bool:
    """Whether this interpreter salts ``hash(str)`` per process.

    It does unless ``PYTHONHASHSEED`` was set to an integer before it started.
    """
    if sys.flags.hash_randomization == 0:
        return False
    return _HASH_SEED_AT_START in (None, "", "random")


def set_recipe_flags() -> None:
    """What the common recipe sets: cuDNN deterministic on, cuDNN benchmark off."""
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _set_cublas_workspace() -> None:
    global _cublas_set_late
    if not cublas_needs_workspace_config() or os.environ.get(CUBLAS_ENV):
        return
    os.environ[CUBLAS_ENV] = CUBLAS_VALUE
    if _cuda_started():
        _cublas_set_late = True
        log.warning(
            "torchrepro: %s was set after CUDA started, so cuBLAS may already run without it "
            "and matrix products may not repeat. Set it before the first CUDA operation "
            "(export %s=%s), or launch with `torchrepro run --deterministic -- CMD`.",
            CUBLAS_ENV,
            CUBLAS_ENV,
            CUBLAS_VALUE,
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

    Example:
        >>> enable_determinism("warn")
        >>> torch.are_deterministic_algorithms_enabled()
        True
    """
    if check_mode(mode) is False:
        raise DeterminismError(
            "enable_determinism(False) would switch nothing on; "
            "use `with deterministic():` to restore flags afterwards instead."
        )
    set_recipe_flags()
    _set_cublas_workspace()
    os.environ.setdefault(FLASH_ATTENTION_ENV, "1")
    torch.use_deterministic_algorithms(True, warn_only=mode == "warn")
    _set_fill(fill_uninitialized_memory)
    if replace_ops:
        detops.patch_nondeterministic_ops()


@contextlib.contextmanager
def deterministic(
    mode: Mode = True, *, fill_uninitialized_memory: bool = False, replace_ops: bool = True
) -> Iterator[None]:
    """Determinism switched on inside the block, every flag and variable restored after.

    Example:
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
    """Every setting that decides whether a training repeats, and what is not controlled."""

    cudnn_deterministic: bool
    cudnn_benchmark: bool
    deterministic_algorithms: bool
    warn_only: bool
    fill_uninitialized_memory: bool
    replaced_ops: bool
    cublas_workspace_config: str | None
    cublas_needs_workspace_config: bool
    cublas_set_after_cuda_started: bool
    cuda_initialized: bool
    tf32_matmul: bool
    tf32_cudnn: bool
    float32_matmul_precision: str
    sdpa_backends: dict[str, bool]
    num_threads: int
    num_interop_threads: int
    python_hash_seed: str | None
    string_hashing_randomized: bool
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
        found.append(f"{CUBLAS_ENV} is not set: cuBLAS matrix products may not repeat")
    if status["cublas_set_after_cuda_started"]:
        found.append(f"{CUBLAS_ENV} was set after CUDA started: cuBLAS may ignore it")
    found.append(
        f"CPU results can depend on the thread count ({status['num_threads']} now): "
        "compare runs with the same torch.get_num_threads()"
    )
    return found


def determinism_status() -> DeterminismStatus:
    """Reports every setting relevant to repeatability, and what is still uncontrolled.

    Reading the status never initialises CUDA.

    Example:
        >>> print(determinism_status().cudnn_benchmark)
        False
    """
    enabled, warn_only = _FLAGS["deterministic_algorithms"][0]()
    cuda_initialized = _cuda_started()
    status: dict[str, Any] = dict(
        cudnn_deterministic=bool(torch.backends.cudnn.deterministic),
        cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
        deterministic_algorithms=bool(enabled),
        warn_only=bool(warn_only),
        fill_uninitialized_memory=bool(_FLAGS["fill_uninitialized_memory"][0]()),
        replaced_ops=bool(detops.patched_ops()),
        cublas_workspace_config=os.environ.get(CUBLAS_ENV),
        cublas_needs_workspace_config=cublas_needs_workspace_config(),
        cublas_set_after_cuda_started=_cublas_set_late,
        cuda_initialized=cuda_initialized,
        tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32),
        tf32_cudnn=bool(torch.backends.cudnn.allow_tf32),
        float32_matmul_precision=torch.get_float32_matmul_precision(),
        sdpa_backends=_sdpa_backends(),
        num_threads=torch.get_num_threads(),
        num_interop_threads=torch.get_num_interop_threads(),
        python_hash_seed=os.environ.get(HASH_SEED_ENV),
        string_hashing_randomized=string_hashing_randomized(),
    )
    return DeterminismStatus(**status, uncontrolled=_uncontrolled(status))
