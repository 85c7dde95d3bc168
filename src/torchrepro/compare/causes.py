"""The diagnosis vocabulary: why two runs part, by evidence, and the likely causes.

``torchrepro diff`` and ``torchrepro check`` print the same words. A divergence is a
difference in what the training computed (:mod:`~torchrepro.compare.entries`);
:func:`classify` puts it in one of the :data:`CATEGORIES` from what the comparisons showed
(the first differing record, the op replay's localization, the environment differences,
the RNG states), and :func:`diagnose` turns the same evidence into the "likely causes"
lines, each saying what it rests on.

Examples:
    >>> from torchrepro.compare import environment_differences
    >>> envs = [{"threads": {"intra_op": 4}}, {"threads": {"intra_op": 8}}]
    >>> for cause in diagnose(["grads.fc.weight"], step=3,
    ...                       environment=environment_differences(*envs)):
    ...     print(cause)  # doctest: +NORMALIZE_WHITESPACE
    threads.intra_op differs between the runs: thread count: parallel reductions split work
    differently.
    at step 3 the first difference is in gradients of fc.weight (where recorded, the batch
    and logged values match), no replay named an op, and the environments differ in
    threads.intra_op: the environment difference is the likelier cause; run both alike
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torchrepro import _contract, _flags
from torchrepro.compare.entries import describe_difference
from torchrepro.compare.environment import EnvDifference
from torchrepro.compare.rng import RngDifference, source_words
from torchrepro.localize import NONDETERMINISTIC_OPS, OUTSIDE, Localization, op_base_name
from torchrepro.records.format import (
    BATCH,
    GRADS,
    LOG,
    PARAMS,
    STEPS,
    section_of,
)

__all__ = [
    "CATEGORIES",
    "CONTROL_FLOW",
    "DATA",
    "ENVIRONMENT",
    "NONDETERMINISTIC_OP",
    "OUTSIDE_TORCH",
    "RNG_STATE",
    "UNINITIALIZED_MEMORY",
    "UNKNOWN",
    "Diagnosis",
    "classify",
    "diagnose",
    "render_causes",
]

# The diagnosis categories (the check report's "diagnosis" JSON carries their values).
DATA = "data"  # the batch the data pipeline yielded differs: order or augmentation
OUTSIDE_TORCH = "outside-torch"  # values made outside torch's ops reach a module
RNG_STATE = "rng"  # a random draw differs because an RNG state differs
UNINITIALIZED_MEMORY = "uninitialized-memory"  # an op read memory no op had written
ENVIRONMENT = "environment"  # an environment difference, with an op whose output differs
NONDETERMINISTIC_OP = "nondeterministic-op"  # different output, identical inputs and setup
CONTROL_FLOW = "control-flow"  # the runs executed different ops, steps or processes
UNKNOWN = "unknown"  # none of these could be established; the evidence says why
CATEGORIES = {
    DATA: "the data the pipeline yielded differs",
    OUTSIDE_TORCH: "values made outside torch's ops",
    RNG_STATE: "a random draw differs because an RNG state differs",
    UNINITIALIZED_MEMORY: "a read of memory no op had written",
    ENVIRONMENT: "an environment difference",
    NONDETERMINISTIC_OP: "an op gave a different output from identical inputs",
    CONTROL_FLOW: "the runs executed different code",
    UNKNOWN: "not established",
}
"""Each diagnosis category, in words."""


@dataclass(frozen=True)
class Diagnosis:
    """Why two runs part: a category of :data:`CATEGORIES` and the evidence it rests on.

    Attributes:
        category: One of the category constants (``"rng"``, ``"data"``, ...).
        step: The step of the first divergence.
        rank: Under torchrun, the rank where it was found; None for one process.
        module: The full path of the module where it was localized (``"encoder.0"``).
        op: The ATen op localized (``"aten.add.Tensor"``).
        evidence: What the category rests on, in words.
        advice: What to look at or try.
    """

    category: str
    step: int | None
    rank: int | None
    module: str | None
    op: str | None
    evidence: str
    advice: str = ""

    @property
    def cause(self) -> str:
        """The likely cause it makes, evidence first: "evidence: advice"."""
        return f"{self.evidence}: {self.advice}" if self.advice else self.evidence

    def render(self, indent: str = "") -> list[str]:
        """The diagnosis lines of a report.

        Examples:
            >>> found = Diagnosis(DATA, 0, None, None, None, "the batch differs at step 0",
            ...                   "look at data order and augmentation")
            >>> print("\\n".join(found.render()))
            diagnosis: data (the data the pipeline yielded differs)
              evidence: the batch differs at step 0
              advice: look at data order and augmentation
        """
        return [
            f"{indent}diagnosis: {self.category} ({CATEGORIES[self.category]})",
            f"{indent}  evidence: {self.evidence}",
            *([f"{indent}  advice: {self.advice}"] if self.advice else []),
        ]


def _keys_words(environment: Sequence[EnvDifference]) -> str:
    keys = [e.key for e in environment]
    more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
    return ", ".join(keys[:3]) + more


def _words_list(words: Sequence[str]) -> str:
    return " and ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)


def _at(step: int | None) -> str:
    return f"step {step}" if step is not None else "the first differing step"


def _localized(where: Localization, environment: Sequence[EnvDifference]) -> tuple[str, str]:
    """The category and evidence of what a replay localized (any kind but "none")."""
    place = f"{where.op} in {where.module} ({where.phase})"
    if where.kind == "op" and where.random:
        return RNG_STATE, (
            f"{place} draws random numbers and gave a different output from identical "
            "inputs, so the RNG state it drew from differed"
        )
    if where.kind == "uninitialized":
        source = where.source_op or "an op that returns uninitialized memory"
        return UNINITIALIZED_MEMORY, (
            f"{place} read memory made by {source} that no op had written, and its output differs"
        )
    if where.kind == "input":
        return OUTSIDE_TORCH, (
            f"the inputs of {place} differed while every op before it gave identical outputs"
        )
    if where.kind == "op" and environment:
        return ENVIRONMENT, (
            f"{place} gave a different output from identical inputs, and the environments "
            f"differ in {_keys_words(environment)}"
        )
    if where.kind == "op":
        return NONDETERMINISTIC_OP, (
            f"{place} gave a different output from identical inputs, in the same environment"
        )
    return CONTROL_FLOW, where.describe()


def classify(
    keys: Sequence[str],
    *,
    step: int | None = None,
    rank: int | None = None,
    entry: int | None = None,
    first: str | None = None,
    environment: Sequence[EnvDifference] = (),
    localization: Localization | None = None,
    rng: Sequence[RngDifference] = (),
) -> Diagnosis:
    """The category of a divergence and its evidence, from what each comparison showed.

    Args:
        keys: What differs at the first diverging entry, in causal order (``()`` when the
            runs recorded different numbers of steps or training processes).
        step, rank, entry: Where: the entry's step, its rank under torchrun, its position
            in run A's record (to tell which RNG differences came before it).
        first: The first differing record in words (default: from ``keys``).
        environment: Environment differences between the runs.
        localization: Where a replay found the first differing op, if one ran.
        rng: The RNG sources whose states differ (:func:`~torchrepro.compare.rng_differences`).

    Examples:
        >>> clock = RngDifference("torch", entry=1, step=1, drew=(True, True), steps=3)
        >>> found = classify(["params.fc.weight"], step=2, entry=2, rng=[clock])
        >>> found.category, found.step
        ('rng', 2)
        >>> print(found.evidence)  # doctest: +NORMALIZE_WHITESPACE
        torch's CPU generator differs from step 1, before the first computed difference
        (parameters of fc.weight at step 2), and the training draws from it
        >>> where = Localization("op", "aten.mm.default", "fc", "forward", index=3)
        >>> classify(["grads.fc.weight"], step=2, localization=where).category
        'nondeterministic-op'
    """
    what = first or describe_difference(keys)
    section = section_of(keys[0]) if keys else STEPS
    where = None if localization is None or localization.kind == "none" else localization
    module = None if where is None or where.module == OUTSIDE else where.module
    op = None if where is None else where.op
    rank = rank if where is None or where.rank is None else where.rank

    def found(category: str, evidence: str) -> Diagnosis:
        if category == NONDETERMINISTIC_OP and op_base_name(op or "") in NONDETERMINISTIC_OPS:
            advice = f"{op_base_name(op or '')} has a nondeterministic CUDA kernel"
        elif category == UNKNOWN:
            advice = _UNKNOWN_ADVICE.get(section, "")
        else:
            advice = _ADVICE[category].format(module=module or OUTSIDE)
        return Diagnosis(category, step, rank, module, op, evidence, advice)

    drawn = [d for d in rng if d.drawn and (entry is None or d.entry <= entry)]
    before = [d for d in drawn if entry is not None and d.entry < entry]
    rng_first = ""
    if before:
        rng_first = (
            f"{source_words(before[0].source)} differs from step {before[0].step}, before the "
            f"first computed difference ({what} at {_at(step)}), and the training draws from it"
        )
    if section == STEPS:
        return found(CONTROL_FLOW, what if step is None else f"{what} (at step {step})")
    if section == BATCH:
        if before:
            return found(RNG_STATE, rng_first)
        same = [d for d in drawn if d.entry == entry]
        if same:  # drawn from a generator that parts in this very step: reseeded, or drawn more
            return found(
                RNG_STATE,
                f"{what} differs at {_at(step)}, and {source_words(same[0].source)}, which the "
                "training draws from, parts in that same step: a reseed or a different number "
                "of draws in it changed what was drawn",
            )
        return found(DATA, f"{what} differs at {_at(step)}, before the model sees it")
    if where is not None:
        category, evidence = _localized(where, environment)
        same = [d for d in drawn if d.entry == entry]
        if category == NONDETERMINISTIC_OP and same and not before:
            # A kernel that is merely nondeterministic moves no generator: one that parts in
            # this very step says the op drew from it (dropout inside a fused RNN kernel).
            return found(
                RNG_STATE,
                f"in the replay of {_at(step)}, {evidence}; {source_words(same[0].source)}, "
                "which the training draws from, parts in that same step: the op likely "
                "draws from it",
            )
        if before and category != UNINITIALIZED_MEMORY:
            evidence += f"; {rng_first}"  # a likely source of what the replay saw
        return found(category, f"in the replay of {_at(step)}, {evidence}")
    if before:
        return found(RNG_STATE, rng_first)
    order = (BATCH, LOG, GRADS, PARAMS)
    recorded = [_RECORDED[s] for s in order[: order.index(section)]] if section in order else []
    evidence = f"at {_at(step)} the first difference is in {what}" + (
        f" (where recorded, the {_words_list(recorded)} match)" if recorded else ""
    )
    if environment:
        return found(
            ENVIRONMENT,
            f"{evidence}, no replay named an op, and the environments differ in "
            f"{_keys_words(environment)}",
        )
    if localization is not None:
        evidence += f", and the replay of {_at(step)} computed the same values in both runs"
    else:
        evidence += ", and no replay named an op"
    if drawn:
        evidence += (
            f"; {source_words(drawn[0].source)} differs from that step too (whether it parted "
            "before the computed values cannot be told from the record)"
        )
    return found(UNKNOWN, evidence)


_RECORDED = {BATCH: "batch", LOG: "logged values", GRADS: "gradients", PARAMS: "parameters"}
_UNKNOWN_ADVICE = {
    LOG: "look at how the logged value is computed",
    GRADS: "look at backward kernels",
    PARAMS: "look at the optimizer (learning rate, schedule, state)",
}


def diagnose(
    keys: Sequence[str] | None,
    *,
    environment: Sequence[EnvDifference] = (),
    manifests: Sequence[Mapping[str, Any]] = (),
    localization: Localization | None = None,
    seeded: bool | None = None,
    deterministic: bool | None = None,
    rng: Sequence[RngDifference] = (),
    step: int | None = None,
    rank: int | None = None,
    entry: int | None = None,
    first: str | None = None,
) -> list[str]:
    """The likely causes of a divergence, each with its evidence: what diff and check print.

    Each line reads "evidence: conclusion or advice". The first after the environment
    differences is the :func:`classify` diagnosis.

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
        deterministic: Whether deterministic algorithms were on; None: read from the
            manifests (unknown without them).
        rng, step, rank, entry, first: As for :func:`classify`.

    Examples:
        >>> diagnose(["batch[0] 4x8 float32"], step=0)[0]
        'the input batch (batch 4x8 float32) differs at step 0, before the model sees it: look at data order and augmentation'
        >>> where = Localization("op", "aten.mm.default", "fc", "forward", index=3)
        >>> for cause in diagnose(["grads.fc.weight"], step=2, localization=where,
        ...                       deterministic=False):
        ...     print(cause)  # doctest: +NORMALIZE_WHITESPACE
        in the replay of step 2, aten.mm.default in fc (forward) gave a different output from
        identical inputs, in the same environment: look for a nondeterministic kernel, or a
        setting that changes between calls
        deterministic algorithms were off in the runs: try --deterministic
    """  # noqa: E501
    causes = [f"{e.key} differs between the runs: {e.note}" for e in environment]
    if keys is None:
        return causes
    settings = [m.get("determinism") or {} for m in manifests]
    salted = any(s.get(_flags.STRING_HASHING) for s in settings)
    warn_only = any(s.get(_flags.WARN_ONLY) for s in settings)
    if deterministic is None and settings:
        deterministic = all(s.get(_flags.DETERMINISTIC_ALGORITHMS) for s in settings)
    found = classify(
        keys,
        step=step,
        rank=rank,
        entry=entry,
        first=first,
        environment=environment,
        localization=localization,
        rng=rng,
    )
    causes.append(found.cause)
    if found.category == DATA and salted:
        causes.append(
            "the runs' manifests show str hashing salted per process: set and dict-of-str "
            f"order (e.g. a file list built from a set) changes per run; set "
            f"{_contract.HASH_SEED}"
            + (", or run under torchrepro seeding (drop --no-seed)" if seeded is False else "")
        )
    if found.category in (DATA, RNG_STATE) and seeded is False:
        causes.append(
            "this check ran without torchrepro seeding (--no-seed), so every RNG and hash "
            "seed the script does not set itself starts differently: try without it"
        )
    if found.category == NONDETERMINISTIC_OP and deterministic is False:
        causes.append("deterministic algorithms were off in the runs: try --deterministic")
    elif found.category == NONDETERMINISTIC_OP and deterministic and warn_only:
        causes.append(
            "deterministic algorithms were on in warn-only mode in the runs: nondeterministic "
            "kernels still run (torch warns of each in the runs' stderr)"
        )
    if localization is not None and localization.nondeterministic_ops:
        causes.append(
            f"the replay's trace shows ops with nondeterministic CUDA kernels in "
            f"{localization.module}: " + ", ".join(localization.nondeterministic_ops)
        )
    return causes


_ADVICE = {
    DATA: "look at data order and augmentation",
    OUTSIDE_TORCH: (
        "values made outside torch's ops reach {module}: numpy or Python randomness not "
        "seeded by torchrepro, os.urandom, time, I/O or another process; seed or remove "
        "that source"
    ),
    RNG_STATE: (
        "a generator seeded differently (e.g. from the clock) or drawing a different number "
        "of values; seed it with a fixed value, or run with --take-over so that the script's "
        "own seeding derives from the root seed"
    ),
    UNINITIALIZED_MEMORY: (
        "the values read are whatever was in memory; fill the tensor before reading it "
        "(torch.zeros instead of torch.empty, or write every element)"
    ),
    ENVIRONMENT: "the environment difference is the likelier cause; run both alike",
    NONDETERMINISTIC_OP: "look for a nondeterministic kernel, or a setting that changes "
    "between calls",
    CONTROL_FLOW: (
        "the runs took different code paths: a branch on a value that differs (time, a "
        "random draw outside the seeded RNGs, file order)"
    ),
}


def render_causes(causes: Sequence[str], indent: str = "") -> list[str]:
    """The "likely causes" lines of a report.

    Examples:
        >>> print("\\n".join(render_causes(["one", "two"])))
        likely causes: one
                       two
    """
    if not causes:
        return []
    head = f"{indent}likely causes: "
    return [head + causes[0], *(" " * len(head) + cause for cause in causes[1:])]
