"""``torchrepro diff``: two record files compared, environment first, then the first step.

Examples:
    >>> for name, lr in (("a.jsonl", 0.1), ("b.jsonl", 0.2)):  # the same training, two lrs
    ...     _ = torch.manual_seed(0); model = torch.nn.Linear(2, 1)
    ...     opt = torch.optim.SGD(model.parameters(), lr=lr)
    ...     with torchrepro.record(name):
    ...         for _ in range(2):
    ...             opt.zero_grad(); model(torch.ones(1, 2)).sum().backward(); opt.step()
    >>> d = diff_records("a.jsonl", "b.jsonl")
    >>> d.identical, d.first_step, d.tensors
    (False, 0, ('params.weight', 'params.bias'))
    >>> d.causes[0].split(": ")[1]
    'look at the optimizer (learning rate, schedule, state)'
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from torchrepro.compare.causes import Diagnosis, classify, diagnose, render_causes
from torchrepro.compare.entries import compare_entries
from torchrepro.compare.environment import EnvDifference, environment_differences
from torchrepro.compare.rng import RngDifference, rng_differences
from torchrepro.compare.sizes import Gap, entry_gap, gap_series, outside_tolerance
from torchrepro.errors import RecordError
from torchrepro.records.format import OPTIMIZER, STEP, Record, entry_values, read_record

__all__ = ["RecordDiff", "diff_records", "render_growth"]

RecordLike = Union[Record, str, "os.PathLike[str]"]


@dataclass(frozen=True)
class RecordDiff:
    """The comparison of two records.

    Attributes:
        a, b: Paths of the records compared.
        env: Environment differences, in manifest order.
        comparable: False when the digests cannot be compared (different digest
            algorithms); ``reason`` says why.
        reason: Why the records are not comparable, else None.
        steps_compared: Number of entries compared.
        first_step: Step index of the first entry whose digests differ, else None.
        first_entry: Position (0-based) of that entry in the files, else None.
        optimizer: Optimizer index of that entry, else None.
        tensors: What differs in that entry, e.g. ``"params.fc.weight"``, ``"log.loss"``
            (``"steps"`` when the entries are of different steps or optimizers).
        length_a, length_b: Number of entries in each record.
        truncated_a, truncated_b: Whether each record was cut short by a crash.
        details: The two values of each differing key.
        causes: The likely causes of the divergence (see :func:`diagnose`).
        diagnosis: The category of the divergence and its evidence (:func:`classify`).
        rng: The RNG sources whose states differ over the steps compared: no divergence
            by themselves, reported as notes.
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
    causes: tuple[str, ...] = ()
    diagnosis: Diagnosis | None = None
    rng: tuple[RngDifference, ...] = ()
    tolerance: tuple[float, float] | None = None
    first_inexact: int | None = None
    gap: Gap | None = None
    growth: tuple[float, ...] = ()

    @property
    def identical(self) -> bool:
        """True when every entry matches bitwise and both records have the same length."""
        return (
            self.comparable
            and self.first_entry is None
            and self.first_inexact is None
            and self.length_a == self.length_b
        )

    @property
    def within_tolerance(self) -> bool:
        """True when, with ``--rtol/--atol``, no entry differs beyond the tolerance."""
        return (
            self.comparable
            and self.tolerance is not None
            and self.first_entry is None
            and self.length_a == self.length_b
        )

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
            "causes": list(self.causes),
            "diagnosis": None if self.diagnosis is None else vars(self.diagnosis),
            "rng": [vars(d) for d in self.rng],
            "tolerance": None
            if self.tolerance is None
            else {"rtol": self.tolerance[0], "atol": self.tolerance[1]},
            "within_tolerance": self.within_tolerance,
            "first_inexact_step": self.first_inexact,
            "gap": None if self.gap is None else {**vars(self.gap), "relative": self.gap.relative},
            "growth": list(self.growth),
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
        tolerance = ""
        if self.tolerance is not None:
            tolerance = f" beyond rtol={self.tolerance[0]:g}, atol={self.tolerance[1]:g}"
        if self.first_entry is not None:
            opt = f" (optimizer {self.optimizer})" if self.optimizer else ""
            out.append(
                f"DIVERGED at step {self.first_step}{opt}: {len(self.tensors)} of the recorded "
                f"values differ{tolerance} ({self.steps_compared - 1} earlier steps "
                f"{'within tolerance' if tolerance else 'identical'})"
            )
            for name in self.tensors:
                a, b = self.details.get(name, (None, None))
                out.append(f"  {name}: {_short(a)} -> {_short(b)}")
            out += self._sizes()
            out += [f"note: {d.describe()}" for d in self.rng]
            causes = list(self.causes)
            if self.diagnosis is not None:
                out += self.diagnosis.render()
                causes.remove(self.diagnosis.cause)  # shown above
            out += render_causes(causes)
            return "\n".join(out)
        elif self.within_tolerance:
            assert self.tolerance is not None
            out.append(
                f"WITHIN TOLERANCE (rtol={self.tolerance[0]:g}, atol={self.tolerance[1]:g}): "
                f"bitwise they part at step {self.first_inexact}, but every value stays "
                f"within it over all {self.steps_compared} steps (sizes compared by sum |x|, "
                "L2 and max |x|, not elementwise)"
                if self.first_inexact is not None
                else f"IDENTICAL: all {self.steps_compared} steps match"
            )
            out += self._sizes()
        elif self.length_a != self.length_b:
            shorter = "A" if self.length_a < self.length_b else "B"
            out.append(
                f"all {self.steps_compared} common steps identical, but {shorter} stops early "
                f"({self.length_a} vs {self.length_b} steps)"
            )
        else:
            out.append(f"IDENTICAL: all {self.steps_compared} steps match")
        out += [f"note: {d.describe()}" for d in self.rng]
        return "\n".join(out)

    def _sizes(self) -> list[str]:
        lines = []
        if self.gap is not None:
            lines.append(f"  size at the first difference: {self.gap.describe()}")
        lines += render_growth(self.growth, self.first_inexact)
        return lines


def render_growth(growth: Sequence[float], first_step: int | None, indent: str = "  ") -> list[str]:
    """The line saying how a gap grows, from :func:`~torchrepro.compare.sizes.gap_series`.

    Examples:
        >>> render_growth([1e-8, 1e-6, 1e-4], 2)
        ['  growth: the largest relative gap of a parameter goes from 1e-08 at step 2 to 1e-04 at step 4 (x1e+04 in 2 steps)']
    """  # noqa: E501
    if len(growth) < 2 or first_step is None:
        return []
    first, last = growth[0], growth[-1]
    steps = len(growth) - 1
    factor = (
        f" (x{last / first:.0e} in {steps} step{'s' if steps > 1 else ''})" if first > 0 else ""
    )
    return [
        f"{indent}growth: the largest relative gap of a parameter goes from {first:.0e} at "
        f"step {first_step} to {last:.0e} at step {first_step + len(growth) - 1}{factor}"
    ]


def _short(value: Any) -> str:
    text = "-" if value is None else json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def _load(r: RecordLike) -> Record:
    return r if isinstance(r, Record) else read_record(r)


def diff_records(
    a: RecordLike, b: RecordLike, *, rtol: float | None = None, atol: float | None = None
) -> RecordDiff:
    """Compare two run records.

    Environment differences come first (each with a note on why it can change results),
    then the first step whose digests differ, every value that differs in it, and the
    likely causes.

    Args:
        a, b: Records, or paths to record files.
        rtol, atol: Compare within ``atol + rtol * |b|`` instead of bitwise (records of
            two machines that cannot be bitwise equal): parameters and gradients by their
            sizes (sum |x|, L2, max |x|; not elementwise), logged numbers as numbers,
            anything else still bitwise. Either one switches tolerance on (the other is 0).

    Returns:
        A :class:`RecordDiff`; ``.identical`` is the verdict, ``.render()`` the report.

    Raises:
        RecordError: if a file cannot be read as a record.

    Examples:
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> with torchrepro.record("a.jsonl"):
        ...     for _ in range(2):
        ...         opt.zero_grad(); model(torch.ones(1, 2)).sum().backward(); opt.step()
        >>> print(diff_records("a.jsonl", "a.jsonl").render())
        A: a.jsonl (2 steps)
        B: a.jsonl (2 steps)
        environment: identical
        IDENTICAL: all 2 steps match
    """
    tolerance = None if rtol is None and atol is None else (rtol or 0.0, atol or 0.0)
    if tolerance is not None and (min(tolerance) < 0 or any(map(math.isnan, tolerance))):
        raise RecordError(
            f"rtol and atol must be non-negative numbers; got rtol={rtol}, atol={atol}. "
            "Pass e.g. --rtol 1e-5."
        )
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
        "first_step": None,
        "first_entry": None,
        "optimizer": None,
        "tensors": (),
    }
    if tolerance is not None:
        base["tolerance"] = tolerance
    inexact: int | None = None  # the first entry that differs bitwise
    for n, (ea, eb) in enumerate(zip(ra.entries, rb.entries)):
        try:
            found = compare_entries(ea, eb)
        except RecordError as error:
            return RecordDiff(**base, comparable=False, reason=str(error), steps_compared=n)
        if found is None:
            continue
        if inexact is None:
            inexact = n
            base["first_inexact"] = ea.get(STEP)
            base["gap"] = entry_gap(ea, eb, found.keys)
            base["growth"] = tuple(gap_series(ra.entries[n:], rb.entries[n:]))
        keys = found.keys
        if tolerance is not None:
            keys = tuple(outside_tolerance(ea, eb, found.keys, *tolerance))
            if not keys:
                continue  # apart, but within tolerance
        va, vb = entry_values(ea), entry_values(eb)
        rng = rng_differences(ra.entries, rb.entries, count=n + 1)
        where: dict[str, Any] = {"step": ea.get(STEP), "entry": n, "rng": rng, "environment": env}
        return RecordDiff(
            **{
                **base,
                "first_step": ea.get(STEP),
                "first_entry": n,
                "optimizer": ea.get(OPTIMIZER),
                "tensors": keys,
            },
            comparable=True,
            reason=None,
            steps_compared=n + 1,
            details={k: (va.get(k), vb.get(k)) for k in keys},
            causes=tuple(diagnose(keys, manifests=[ra.env, rb.env], **where)),
            diagnosis=classify(keys, **where),
            rng=rng,
        )
    steps = min(len(ra.entries), len(rb.entries))
    rng = rng_differences(ra.entries, rb.entries)
    return RecordDiff(**base, comparable=True, reason=None, steps_compared=steps, rng=rng)
