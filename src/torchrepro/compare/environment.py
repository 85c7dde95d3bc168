"""The environments of two runs compared: what differs, and why each difference matters.

Each key of the environment manifest (:mod:`torchrepro.env`) comes with a note on how it
can change a training's result (determinism settings with those of :mod:`torchrepro._flags`);
``torchrepro diff`` and ``torchrepro check`` print the same notes.

Examples:
    >>> (d,) = environment_differences({"threads": {"intra_op": 4}}, {"threads": {"intra_op": 8}})
    >>> d.key, d.note
    ('threads.intra_op', 'thread count: parallel reductions split work differently.')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torchrepro import _contract, _flags

__all__ = ["EnvDifference", "environment_differences", "flatten"]

_NOTES = {
    "python": "Python version: hashing, float formatting and library wheels can differ.",
    "platform": "OS or kernel: usually harmless, but changes libc math and thread scheduling.",
    "torch": "torch version: kernels, defaults and RNG consumption change between releases.",
    "numpy": "numpy version: random streams and reductions can change between releases.",
    "cuda": "CUDA version: different kernels and libraries (cuBLAS, cuFFT) are used.",
    "hip": "ROCm version: different kernels are used.",
    "cudnn": "cuDNN version: convolution algorithms and their rounding change.",
    "nccl": "NCCL version: all-reduce algorithms and summation order can change.",
    "gpu.count": "number of GPUs: data split and reduction order change.",
    "gpu.names": "GPU model: different kernels, tiling and atomics order.",
    "gpu.capability": "compute capability: different kernels (and TF32/bf16 paths) are chosen.",
    "gpu.driver": "driver version: can change JIT-compiled kernels.",
    "gpu": "GPU presence: a CPU run and a GPU run compute differently.",
    "cpu.model": "CPU model: vector width (AVX2/AVX-512) changes float summation order.",
    "cpu.count": "CPU count: default thread count and reduction split can follow it.",
    "cpu.machine": "CPU architecture: different kernels and float behaviour.",
    "threads": "thread count: parallel reductions split work differently.",
    **{f"determinism.{name}": note for name, note in _flags.NOTES.items()},
    f"env_vars.{_contract.HASH_SEED}": "hash seed: set and dict-of-str order, hence data order.",
    f"env_vars.{_contract.CUBLAS}": "cuBLAS workspace: needed for deterministic matmuls.",
    "env_vars.OMP_NUM_THREADS": "OpenMP threads: parallel reductions split work differently.",
    "env_vars.MKL_NUM_THREADS": "MKL threads: BLAS splits work differently.",
    "env_vars.CUDA_VISIBLE_DEVICES": "visible GPUs: another device or device count.",
    "env_vars.NVIDIA_TF32_OVERRIDE": "TF32 override: changes matmul rounding.",
    "env_vars": "environment variable read by a library at start-up.",
    "seed": "seed: every random stream differs.",
    "world_size": "world size: data split and all-reduce order change.",
    "rank": "rank: each rank sees different data and seeds.",
    "git": "code version: the training code itself differs.",
    "python_implementation": "Python implementation: different runtime.",
}
# Keys that describe where a run happened, not how it computes: the working copy's state,
# and what `torchrepro check` gives each run of its own (record file, number, resume).
_IGNORED = frozenset(("git.dirty", *(f"env_vars.{name}" for name in _contract.PER_RUN)))


def _note(key: str) -> str:
    while True:
        if key in _NOTES:
            return _NOTES[key]
        if "." not in key:
            return "may change results."
        key = key.rsplit(".", 1)[0]


def flatten(manifest: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A manifest as ``{"dotted.key": value}``, the form diffs are made and printed in.

    Examples:
        >>> flatten({"threads": {"intra_op": 4}, "gpu": None})
        {'threads.intra_op': 4, 'gpu': None}
    """
    out: dict[str, Any] = {}
    for key, value in manifest.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@dataclass(frozen=True)
class EnvDifference:
    """One environment value that differs, with why it can matter."""

    key: str
    a: Any
    b: Any
    note: str


def environment_differences(
    env_a: Mapping[str, Any], env_b: Mapping[str, Any]
) -> tuple[EnvDifference, ...]:
    """The values that differ between two environment manifests, each with why it matters.

    Examples:
        >>> (d,) = environment_differences({"cpu": {"count": 4}}, {"cpu": {"count": 8}})
        >>> d.key, d.a, d.b, d.note
        ('cpu.count', 4, 8, 'CPU count: default thread count and reduction split can follow it.')
    """
    fa, fb = flatten(env_a), flatten(env_b)
    diffs = []
    for key in [*fa, *(k for k in fb if k not in fa)]:
        if key in _IGNORED:
            continue
        va, vb = fa.get(key), fb.get(key)
        if va != vb:
            diffs.append(EnvDifference(key, va, vb, _note(key)))
    return tuple(diffs)
