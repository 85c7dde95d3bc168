"""The environment manifest: everything outside the code that can change a training's result.

``environment()`` returns a JSON-serialisable dict; run records embed it in their header and
``torchrepro env`` prints it. Nothing here initialises CUDA on a machine without it.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from typing import Any

import torch

from torchrepro import _contract, determinism, distributed
from torchrepro.compare.environment import flatten

__all__ = ["ENV_VAR_PREFIXES", "ENV_VARS", "environment", "format_environment"]

# Variables read by libraries at start-up that change kernels, threads, hashing or devices.
ENV_VARS = (
    _contract.HASH_SEED,
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_LAUNCH_BLOCKING",
    "NVIDIA_TF32_OVERRIDE",
    _contract.WORLD_SIZE,
    _contract.RANK,
    _contract.LOCAL_RANK,
)
ENV_VAR_PREFIXES = ("CUBLAS_", "CUBLASLT_", "CUDNN_", "NCCL_ALGO", "NCCL_PROTO", "TORCHREPRO_")


def _env_vars() -> dict[str, str]:
    return {
        k: v
        for k, v in sorted(os.environ.items())
        if k in ENV_VARS or k.startswith(ENV_VAR_PREFIXES)
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: platform.processor() below is the portable answer
    return platform.processor() or platform.machine()


def _run(cmd: list[str], cwd: str | None = None) -> str | None:
    """stdout of a short command, or None when it is missing or fails."""
    try:
        out = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip()


def _git(cwd: str) -> dict[str, Any] | None:
    if shutil.which("git") is None:
        return None
    commit = _run(["git", "rev-parse", "HEAD"], cwd)
    if not commit:
        return None
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd)
    return {"commit": commit, "dirty": bool(status)}


def _gpu() -> dict[str, Any] | None:
    # is_available() asks the driver for a device count without creating a context.
    if not torch.cuda.is_available():
        return None
    count = torch.cuda.device_count()
    driver = None
    if shutil.which("nvidia-smi"):
        smi = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        driver = smi.splitlines()[0].strip() if smi else None
    return {
        "count": count,
        "names": [torch.cuda.get_device_name(i) for i in range(count)],
        "capability": [
            ".".join(map(str, torch.cuda.get_device_capability(i))) for i in range(count)
        ],
        "driver": driver,
    }


def _nccl() -> str | None:
    if not torch.cuda.is_available():
        return None
    try:
        from torch.cuda import nccl

        v = nccl.version()  # type: ignore[no-untyped-call]
    except (ImportError, RuntimeError, AttributeError):
        return None  # a build without NCCL
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


def _cudnn() -> str | None:
    if not torch.backends.cudnn.is_available():  # type: ignore[no-untyped-call]
        return None
    v = torch.backends.cudnn.version()  # type: ignore[no-untyped-call]
    return None if v is None else str(v)


def _seed() -> int | str | None:
    raw = os.environ.get(_contract.SEED)
    if raw is None:
        return None
    return int(raw) if raw.lstrip("-").isdigit() else raw


def environment(cwd: str | None = None) -> dict[str, Any]:
    """The environment manifest of this process, as a JSON-serialisable dict.

    Args:
        cwd: Directory whose git commit is recorded (default: the working directory).

    Returns:
        Versions (Python, torch, CUDA, cuDNN, NCCL, numpy), devices (GPU names, count,
        compute capability, driver; CPU model and count), thread counts, determinism and
        TF32 flags, relevant environment variables, seed, world size, rank and git commit.

    Examples:
        >>> env = environment()
        >>> sorted(env)[:3]
        ['cpu', 'cuda', 'cudnn']
    """
    import numpy

    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
        "hip": torch.version.hip,
        "cudnn": _cudnn(),
        "nccl": _nccl(),
        "gpu": _gpu(),
        "cpu": {"model": _cpu_model(), "count": os.cpu_count(), "machine": platform.machine()},
        "threads": {
            "intra_op": torch.get_num_threads(),
            "inter_op": torch.get_num_interop_threads(),
        },
        "determinism": determinism.settings(),
        "env_vars": _env_vars(),
        "seed": _seed(),
        "world_size": distributed.world_size(),
        "rank": distributed.rank(),
        "git": _git(cwd or os.getcwd()),
    }


def format_environment(manifest: dict[str, Any]) -> str:
    """A manifest as aligned ``key  value`` lines, for people.

    Examples:
        >>> print(format_environment({"torch": "2.13.0", "gpu": None}))
        torch  2.13.0
        gpu    -
    """
    rows = [(k, "-" if v is None else str(v)) for k, v in flatten(manifest).items()]
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
