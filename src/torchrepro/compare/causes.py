"""The diagnosis vocabulary: why an environment difference matters, and the likely causes.

``torchrepro diff`` and ``torchrepro check`` print the same words: an environment
difference comes with its note (determinism settings with those of
:mod:`torchrepro._flags`), and :func:`diagnose` turns what differs into causes.

Example:
    >>> envs = [{"threads": {"intra_op": 4}}, {"threads": {"intra_op": 8}}]
    >>> for cause in diagnose(["params.fc.weight"], environment=environment_differences(*envs)):
    ...     print(cause)
    threads.intra_op differs between the runs: thread count: parallel reductions split work differently.
    inputs, loss and gradients (where recorded) match but updated parameters differ: look at the optimizer (learning rate, schedule, state)
"""  # noqa: E501

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torchrepro import _contract, _flags
from torchrepro.localize import NONDETERMINISTIC_OPS, Localization, op_base_name
from torchrepro.records.format import BATCH, GRADS, LOG, PARAMS, RNG, STEPS, section_of

__all__ = ["EnvDifference", "diagnose", "environment_differences", "flatten", "render_causes"]

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

    Example:
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

    Example:
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


def diagnose(
    keys: Sequence[str] | None,
    *,
    environment: Sequence[EnvDifference] = (),
    manifests: Sequence[Mapping[str, Any]] = (),
    localization: Localization | None = None,
    seeded: bool | None = None,
    deterministic: bool | None = None,
) -> list[str]:
    """The likely causes of a divergence, most specific first: what diff and check print.

    Args:
        keys: What differs at the first diverging entry, in causal order (``()`` when the
            runs recorded different numbers of steps); None when the runs did not diverge
            (then only environment differences are causes).
        environment: Environment differences between the runs.
        manifests: The runs' environment manifests (record headers' ``env``): whether str
            hashing was salted and deterministic algorithms on are read from them.
        localization: Where a replay found the first differing op, if one ran.
        seeded: False when the runs ran without torchrepro seeding (``check --no-seed``);
            None when unknown.
        deterministic: Whether deterministic algorithms were asked for; None: read from
            the manifests (unknown without them).

    Example:
        >>> diagnose(["batch[0][0]"], seeded=False)[0]
        'the data differs before the model sees it: data order or augmentation'
        >>> for cause in diagnose(["grads.fc.weight"], deterministic=False):
        ...     print(cause)
        the loss matches but gradients differ: look at backward kernels
        deterministic algorithms were off: try --deterministic
    """
    causes = [f"{e.key} differs between the runs: {e.note}" for e in environment]
    if keys is None:
        return causes
    settings = [m.get("determinism") or {} for m in manifests]
    salted = any(s.get(_flags.STRING_HASHING) for s in settings)
    if deterministic is None and settings:
        deterministic = all(s.get(_flags.DETERMINISTIC_ALGORITHMS) for s in settings)
    section = section_of(keys[0]) if keys else STEPS
    where = localization
    # A replay that names an op or an input says more than the section alone.
    unlocalized = where is None or where.kind == "none"
    if section == BATCH:
        causes.append("the data differs before the model sees it: data order or augmentation")
        if salted or seeded is False:
            causes.append(
                "str hashing is salted per process, so set/dict-of-str order (e.g. a "
                f"file list built from a set) changes per run: set {_contract.HASH_SEED}, or "
                "run under torchrepro seeding (drop --no-seed)"
            )
        if seeded is False:
            causes.append("this check ran without torchrepro seeding (--no-seed): try without it")
    elif section == RNG:
        causes.append(
            "an RNG state differs: a generator seeded differently or drawing a "
            "different number of values (e.g. data-dependent sampling)"
        )
    elif unlocalized and section == GRADS:
        causes.append("the loss matches but gradients differ: look at backward kernels")
    elif unlocalized and section == PARAMS:
        causes.append(
            "inputs, loss and gradients (where recorded) match but updated parameters "
            "differ: look at the optimizer (learning rate, schedule, state)"
        )
    causes += _localization_causes(where)
    if deterministic is False and section in (LOG, GRADS, PARAMS):
        if where is None or (where.kind == "op" and not where.random):
            causes.append("deterministic algorithms were off: try --deterministic")
    return causes


def _localization_causes(where: Localization | None) -> list[str]:
    if where is None:
        return []
    causes = []
    if where.kind == "op":
        base = op_base_name(where.op or "")
        if where.random:
            causes.append(
                f"{base} in {where.module} drew different random numbers: an RNG state "
                "differed (a reseed, e.g. from the clock, or a different number of draws)"
            )
        elif base in NONDETERMINISTIC_OPS:
            causes.append(
                f"{base} in {where.module} has a nondeterministic CUDA kernel; try --deterministic"
            )
        else:
            causes.append(
                f"{base} in {where.module} gave different results from identical "
                "inputs: a nondeterministic kernel or a changing setting"
            )
    elif where.kind == "uninitialized":
        causes.append(
            f"{op_base_name(where.op or '')} in {where.module} read memory that no op had "
            f"written (made by {where.source_op}): fill it before reading it"
        )
    elif where.kind == "input":
        causes.append(
            f"values made outside torch's ops reach {where.module} ({where.phase}): "
            "numpy or Python randomness not seeded by torchrepro, os.urandom, time, "
            "I/O or another process; seed or remove that source"
        )
    elif where.kind in ("control-flow", "length"):
        causes.append(
            "the runs took different code paths: a branch on a value that differs "
            "(time, a random draw outside the seeded RNGs, file order)"
        )
    if where.nondeterministic_ops:
        causes.append(
            f"ops with nondeterministic CUDA kernels ran in {where.module}: "
            + ", ".join(where.nondeterministic_ops)
        )
    return causes


def render_causes(causes: Sequence[str], indent: str = "") -> list[str]:
    """The "likely causes" lines of a report.

    Example:
        >>> print("\\n".join(render_causes(["one", "two"])))
        likely causes: one
                       two
    """
    if not causes:
        return []
    head = f"{indent}likely causes: "
    return [head + causes[0], *(" " * len(head) + cause for cause in causes[1:])]
