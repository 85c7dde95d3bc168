"""Compare two run records: environment differences first, then the first diverging step.

``diff_records(a, b)`` returns a :class:`RecordDiff`; ``RecordDiff.render()`` is the text
``torchrepro diff`` prints.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Union

from torchrepro.env import flatten
from torchrepro.record import Record, read_record

__all__ = [
    "EnvDifference",
    "RecordDiff",
    "diff_records",
    "differing_values",
    "entry_values",
    "environment_differences",
]

# Why a difference in the environment can change results, by dotted key or key prefix.
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
    "determinism.deterministic_algorithms": "deterministic algorithms on/off: kernels differ.",
    "determinism.deterministic_warn_only": "warn-only: nondeterministic kernels may still run.",
    "determinism.cudnn_deterministic": "cuDNN deterministic: picks different convolution algos.",
    "determinism.cudnn_benchmark": "cuDNN benchmark: algorithm chosen by timing, per run.",
    "determinism.cuda_matmul_allow_tf32": "TF32 matmul: products rounded to 10-bit mantissas.",
    "determinism.cudnn_allow_tf32": "TF32 convolutions: products rounded to 10-bit mantissas.",
    "determinism.float32_matmul_precision": "matmul precision: TF32/bf16 internal rounding.",
    "determinism.fill_uninitialized_memory": "uninitialised memory filled or not: a read of "
    "it gives different values.",
    "env_vars.PYTHONHASHSEED": "hash seed: set and dict-of-str order, hence data order.",
    "env_vars.CUBLAS_WORKSPACE_CONFIG": "cuBLAS workspace: needed for deterministic matmuls.",
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
# Keys that describe where a run happened, not how it computes.
_IGNORED = (
    "git.dirty",
    "env_vars.TORCHREPRO_RECORD",
    # What `torchrepro check` sets per run: the run's number and its resume instructions.
    "env_vars.TORCHREPRO_RUN",
    "env_vars.TORCHREPRO_STOP_AT",
    "env_vars.TORCHREPRO_RESUME",
    "env_vars.TORCHREPRO_CHECKPOINT_DIR",
)

RecordLike = Union[Record, str, "os.PathLike[str]"]


def _note(key: str) -> str:
    while True:
        if key in _NOTES:
            return _NOTES[key]
        if "." not in key:
            return "may change results."
        key = key.rsplit(".", 1)[0]


@dataclass(frozen=True)
class EnvDifference:
    """One environment value that differs, with why it can matter."""

    key: str
    a: Any
    b: Any
    note: str


@dataclass(frozen=True)
class RecordDiff:
    """The comparison of two records.

    Attributes:
        a, b: Paths of the records compared.
        env: Environment differences, in manifest order.
        comparable: False when the digests cannot be compared (different digest
            algorithms, or different step structure); ``reason`` says why.
        reason: Why the records are not comparable, else None.
        steps_compared: Number of entries compared.
        first_step: Step index of the first entry whose digests differ, else None.
        first_entry: Position (0-based) of that entry in the files, else None.
        optimizer: Optimizer index of that entry, else None.
        tensors: What differs in that entry, e.g. ``"params.fc.weight"``, ``"log.loss"``.
        length_a, length_b: Number of entries in each record.
        truncated_a, truncated_b: Whether each record was cut short by a crash.
    """

    a: str
    b: str
    env: tuple[EnvDifference, ...]
    comparable: bool
    reason: str | None
    steps_compared: int
    first_step: int | None
    first_entry: int | None
    optimizer: int | None
    tensors: tuple[str, ...]
    length_a: int
    length_b: int
    truncated_a: bool = False
    truncated_b: bool = False
    details: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        """True when every entry matches and both records have the same length."""
        return self.comparable and self.first_entry is None and self.length_a == self.length_b

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form, for ``torchrepro diff --json``."""
        return {
            "a": self.a,
            "b": self.b,
            "identical": self.identical,
            "comparable": self.comparable,
            "reason": self.reason,
            "env": [vars(d) for d in self.env],
            "steps_compared": self.steps_compared,
            "first_step": self.first_step,
            "first_entry": self.first_entry,
            "optimizer": self.optimizer,
            "tensors": list(self.tensors),
            "length_a": self.length_a,
            "length_b": self.length_b,
            "truncated_a": self.truncated_a,
            "truncated_b": self.truncated_b,
        }

    def render(self) -> str:
        """The human-readable report ``torchrepro diff`` prints."""
        out = [f"A: {self.a} ({self.length_a} steps{', cut short' if self.truncated_a else ''})"]
        out.append(
            f"B: {self.b} ({self.length_b} steps{', cut short' if self.truncated_b else ''})"
        )
        if self.env:
            out.append(f"environment: {len(self.env)} difference(s)")
            for d in self.env:
                out.append(f"  {d.key}: {_short(d.a)} -> {_short(d.b)}  ({d.note})")
        else:
            out.append("environment: identical")
        if not self.comparable:
            out.append(f"NOT COMPARABLE: {self.reason}")
            return "\n".join(out)
        if self.first_entry is not None:
            opt = f" (optimizer {self.optimizer})" if self.optimizer else ""
            out.append(
                f"DIVERGED at step {self.first_step}{opt}: {len(self.tensors)} of the recorded "
                f"values differ ({self.steps_compared - 1} earlier steps identical)"
            )
            for name in self.tensors:
                a, b = self.details.get(name, (None, None))
                out.append(f"  {name}: {_short(a)} -> {_short(b)}")
            hint = _hint(self.tensors)
            if hint:
                out.append(hint)
        elif self.length_a != self.length_b:
            shorter = "A" if self.length_a < self.length_b else "B"
            out.append(
                f"all {self.steps_compared} common steps identical, but {shorter} stops early "
                f"({self.length_a} vs {self.length_b} steps)"
            )
        else:
            out.append(f"IDENTICAL: all {self.steps_compared} steps match")
        return "\n".join(out)


def _short(value: Any) -> str:
    text = "-" if value is None else json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def _hint(tensors: tuple[str, ...]) -> str | None:
    sections = {t.split(".", 1)[0].split("[", 1)[0] for t in tensors}
    if "batch" in sections:
        return "hint: the input batch already differs: look at data order and augmentation."
    if "rng" in sections:
        return "hint: an RNG state differs: look for extra or missing random draws."
    if "params" in sections and not sections & {"grads", "log"}:
        return (
            "hint: inputs, loss and gradients (where recorded) match but updated parameters "
            "differ: look at the optimizer (learning rate, schedule, state)."
        )
    if "grads" in sections and "log" not in sections:
        return "hint: the loss matches but gradients differ: look at backward kernels."
    return None


def entry_values(entry: dict[str, Any]) -> dict[str, Any]:
    """Everything comparable in an entry, as ``section.name -> value``, in causal order."""
    out: dict[str, Any] = {}
    for i, digests in enumerate(entry.get("batch", [])):
        for j, d in enumerate(digests):
            out[f"batch[{i}][{j}]"] = d
    for section in ("rng", "log", "grads", "params"):
        for name, value in entry.get(section, {}).items():
            # json.dumps keeps the float exact and tells NaN apart from a missing value.
            out[f"{section}.{name}"] = value if isinstance(value, str) else json.dumps(value)
    return out


def differing_values(a: dict[str, Any], b: dict[str, Any]) -> tuple[str, ...]:
    """The values (``section.name``) that differ between two entries, in causal order."""
    va, vb = entry_values(a), entry_values(b)
    keys = [*va, *(k for k in vb if k not in va)]
    return tuple(k for k in keys if va.get(k) != vb.get(k))


def environment_differences(
    env_a: dict[str, Any], env_b: dict[str, Any]
) -> tuple[EnvDifference, ...]:
    """The values that differ between two environment manifests, each with why it matters."""
    fa, fb = flatten(env_a), flatten(env_b)
    diffs = []
    for key in [*fa, *(k for k in fb if k not in fa)]:
        if key in _IGNORED:
            continue
        va, vb = fa.get(key), fb.get(key)
        if va != vb:
            diffs.append(EnvDifference(key, va, vb, _note(key)))
    return tuple(diffs)


def _load(r: RecordLike) -> Record:
    return r if isinstance(r, Record) else read_record(r)


def diff_records(a: RecordLike, b: RecordLike) -> RecordDiff:
    """Compare two run records.

    Environment differences come first (each with a note on why it can change results),
    then the first step whose digests differ and every value that differs in it.

    Args:
        a, b: Records, or paths to record files.

    Returns:
        A :class:`RecordDiff`; ``.identical`` is the verdict, ``.render()`` the report.

    Raises:
        RecordError: if a file cannot be read as a record.

    Example:
        >>> d = diff_records("a.jsonl", "b.jsonl")
        >>> (d.identical, d.first_step, d.tensors[:1])
        (False, 5, ('params.fc.weight',))
    """
    ra, rb = _load(a), _load(b)
    env = environment_differences(ra.env, rb.env)
    base: dict[str, Any] = {
        "a": ra.path,
        "b": rb.path,
        "env": env,
        "length_a": len(ra.entries),
        "length_b": len(rb.entries),
        "truncated_a": ra.truncated,
        "truncated_b": rb.truncated,
    }
    for n, (ea, eb) in enumerate(zip(ra.entries, rb.entries)):
        alg_a, alg_b = ea.get("algorithm"), eb.get("algorithm")
        if alg_a != alg_b:
            return RecordDiff(
                **base,
                comparable=False,
                reason=(
                    f"step {ea.get('step')} was digested with {alg_a} in A and {alg_b} in B; "
                    "digests of different algorithms never match, so a difference would mean "
                    "nothing. Record both runs with the same algorithm (e.g. "
                    "record(..., algorithm='lanes') on CPU to compare with a GPU run)."
                ),
                steps_compared=n,
                first_step=None,
                first_entry=None,
                optimizer=None,
                tensors=(),
            )
        differing = differing_values(ea, eb)
        va, vb = entry_values(ea), entry_values(eb)
        if (
            differing
            or ea.get("step") != eb.get("step")
            or ea.get("optimizer") != eb.get("optimizer")
        ):
            return RecordDiff(
                **base,
                comparable=True,
                reason=None,
                steps_compared=n + 1,
                first_step=ea.get("step"),
                first_entry=n,
                optimizer=ea.get("optimizer"),
                tensors=differing or ("step/optimizer order",),
                details={k: (va.get(k), vb.get(k)) for k in differing},
            )
    return RecordDiff(
        **base,
        comparable=True,
        reason=None,
        steps_compared=min(len(ra.entries), len(rb.entries)),
        first_step=None,
        first_entry=None,
        optimizer=None,
        tensors=(),
    )
