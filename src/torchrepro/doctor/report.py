"""What `torchrepro doctor` found: one entry per probe x level, the self-tests, and the
recommendation, as text (`DoctorReport.render`) and JSON (`DoctorReport.to_json`).

An entry passes when its op ran, repeated bitwise over every call within a process, and
gave the same bits in two fresh processes. Anything not measured (a time limit, a process
that failed) counts as not passing: the report never claims a repeat it did not see.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from torchrepro.errors import ExitCode

__all__ = ["DoctorReport", "Recommendation", "passes", "recommend"]

FORMAT = "torchrepro-doctor/1"


def passes(entry: dict[str, Any]) -> bool:
    """Whether an entry ran, repeated within its process and repeated across two processes.

    Examples:
        >>> passes({"available": True, "raised": False, "within": True, "across": True})
        True
        >>> passes({"available": True, "raised": False, "within": True, "across": None})
        False
    """
    return bool(
        entry.get("available")
        and not entry.get("raised")
        and entry.get("within") is True
        and entry.get("across") is True
    )


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """The cheapest level under which every probe that matters passed.

    Attributes:
        level: that level; when none made them all pass, the one that made the most pass.
        all_pass: whether `level` made every probe considered pass.
        probes: the probes considered (all available ones, or those the model uses).
        failing: the probes that do not pass under `level`, with why.
        cost: time under `level` as a ratio to defaults (1.25: 25 % slower), or None.
        cost_basis: what `cost` was measured on: "the model's training step" or "the probes".
    """

    level: str | None
    all_pass: bool
    probes: tuple[str, ...]
    failing: tuple[tuple[str, str], ...]
    cost: float | None
    cost_basis: str


def why_not(entry: dict[str, Any] | None) -> str:
    """A short word for how an entry fails: "raises", "differs within a process", ..."""
    if entry is None or "available" not in entry:
        return "not measured"
    if not entry["available"]:
        return "not on this device"
    if entry.get("raised"):
        return "raises"
    if entry.get("within") is False:
        return "differs within a process"
    if entry.get("across") is False:
        return "differs across processes"
    if entry.get("within") is None or entry.get("across") is None:
        return "not measured"
    return "passes"


def _time_ratio(
    entries: dict[tuple[str, str], dict[str, Any]], probes: Sequence[str], level: str
) -> float | None:
    pairs = [
        (entries[(p, level)].get("ms"), entries[(p, "defaults")].get("ms"))
        for p in probes
        if (p, level) in entries and (p, "defaults") in entries
    ]
    timed = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not timed or len(timed) < len(probes):
        return None
    return float(sum(a for a, _ in timed) / sum(b for _, b in timed))


def recommend(
    entries: Sequence[dict[str, Any]],
    levels: Sequence[str],
    relevant: Sequence[str] | None = None,
    model_cost: dict[str, dict[str, Any]] | None = None,
) -> Recommendation:
    """The cheapest of `levels` (cheapest first) under which every relevant probe passed.

    `relevant`: the probes that matter (those a model uses); None for every probe not known
    to be missing on the device (one that was not measured counts, and does not pass).
    `model_cost`: per level the model's measured ``ms`` per step, which the cost is then
    taken from instead of the probes' times.

    Examples:
        >>> ok = {"available": True, "raised": False, "within": True, "across": True}
        >>> entries = [{"probe": "cumsum", "level": "defaults", **ok, "ms": 2.0},
        ...            {"probe": "cumsum", "level": "strict", **ok, "ms": 3.0}]
        >>> recommend(entries, ["defaults", "strict"]).level
        'defaults'
    """
    by_key = {(e["probe"], e["level"]): e for e in entries}
    # A probe counts unless it is known not to run here: one not measured counts, and fails.
    absent = {e["probe"] for e in entries if e.get("available") is False}
    named = dict.fromkeys(e["probe"] for e in entries if e["probe"] not in absent)
    probes = [p for p in named if relevant is None or p in relevant]
    best: tuple[int, str] | None = None
    for level in levels:
        failing = [p for p in probes if not passes(by_key.get((p, level), {}))]
        if best is None or len(failing) < best[0]:
            best = (len(failing), level)
        if not failing:
            break
    if best is None or not probes:
        return Recommendation(None, False, tuple(probes), (), None, "the probes")
    level = best[1]
    reasons = ((p, why_not(by_key.get((p, level)))) for p in probes)
    still = tuple((p, why) for p, why in reasons if why != "passes")
    if model_cost is not None:
        ms, base = model_cost.get(level, {}).get("ms"), model_cost.get("defaults", {}).get("ms")
        cost = ms / base if ms is not None and base else None
        basis = "the model's training step"
    else:
        cost, basis = _time_ratio(by_key, probes, level), "the probes"
    return Recommendation(level, not still, tuple(probes), still, cost, basis)


_CELL = {
    "raises": "raises",
    "differs within a process": "NO: calls",
    "differs across processes": "NO: procs",
    "not on this device": "-",
    "not measured": "?",
}


def _cell(entry: dict[str, Any] | None) -> str:
    why = why_not(entry)
    if why != "passes":
        text = _CELL[why]
    else:
        assert entry is not None
        text = f"{entry['ms']:.2f} ms" if entry.get("ms") is not None else "ok"
    if entry and entry.get("served"):
        text += "*"
    return text


@dataclasses.dataclass
class DoctorReport:
    """Everything one `torchrepro doctor` run measured. `render()` is the text it prints."""

    device: str
    quick: bool
    repeats: int
    levels: list[str]
    environment: dict[str, Any]
    settings: list[tuple[str, Any, Any]]
    entries: list[dict[str, Any]]
    self_test: list[dict[str, Any]]
    recommendation: Recommendation
    model: dict[str, Any] | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> ExitCode:
        """FINDING (1) when a self-test failed or no level made every probe that matters
        repeat; RUN_FAILED (3) when a measuring process failed; else OK (0)."""
        if any(note.startswith("failed:") for note in self.notes):
            return ExitCode.RUN_FAILED
        if any(t["ok"] is False for t in self.self_test) or not self.recommendation.all_pass:
            return ExitCode.FINDING
        return ExitCode.OK

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict: one entry per probe x level."""
        return {
            "format": FORMAT,
            "device": self.device,
            "quick": self.quick,
            "repeats": self.repeats,
            "levels": self.levels,
            "environment": self.environment,
            "settings": [
                {"setting": name, "now": now, "torchrepro": theirs}
                for name, now, theirs in self.settings
            ],
            "entries": self.entries,
            "self_test": self.self_test,
            "model": self.model,
            "recommendation": dataclasses.asdict(self.recommendation),
            "notes": self.notes,
            "seconds": self.seconds,
        }

    def render(self) -> str:
        """The report as text: environment, settings, the probe table, self-test, verdict."""
        probes = list(dict.fromkeys(e["probe"] for e in self.entries))
        width = max((len(name) for name, _, _ in self.settings), default=0) + 1
        lines = [
            f"torchrepro doctor: {self.device}{', quick' if self.quick else ''}, "
            f"{len(probes)} probes x {len(self.levels)} levels, {self.seconds:.0f} s",
            "",
            "environment",
            *(f"  {k:<22} {v}" for k, v in self.environment.items()),
            "",
            f"  {'determinism setting':<{width}} {'now':<12} torchrepro sets",
            *(
                f"  {name:<{width}} {_text(now):<12} {_text(theirs)}"
                for name, now, theirs in self.settings
            ),
            "",
            f"{'probe':<22}" + "".join(f"{level:>13}" for level in self.levels),
        ]
        by_key = {(e["probe"], e["level"]): e for e in self.entries}
        for probe in probes:
            cells = "".join(f"{_cell(by_key.get((probe, lv))):>13}" for lv in self.levels)
            lines.append(f"{probe:<22}{cells}")
        lines += [
            f"  a time: ran {self.repeats + 1} times bitwise alike in one process and gave the "
            "same bits in a second (median time per call)",
            "  NO: calls  differed between calls   NO: procs  differed between processes",
            "  raises  refused (no deterministic kernel)   - not on this device   ? not measured",
            "  *  served by a torchrepro replacement (torchrepro.detops)",
            "",
            "self-test",
            *(f"  {_verdict(t['ok']):<5} {t['self_test']}: {t['detail']}" for t in self.self_test),
            "",
            *self._recommendation_lines(),
            *(f"note: {note}" for note in self.notes),
        ]
        return "\n".join(lines)

    def _recommendation_lines(self) -> list[str]:
        r = self.recommendation
        if r.level is None and self.model is not None and not r.probes:
            return [
                f"recommendation: none: no probe stands for an op {self.model['model']} uses; "
                "run the training itself twice with `torchrepro check`"
            ]
        if r.level is None:
            return ["recommendation: none: no probe that matters was measured"]
        scope = (
            f"the {len(r.probes)} probes {self.model['model']} uses"
            if self.model is not None
            else f"all {len(r.probes)} probes available here"
        )
        cost = (
            f"; time {r.cost:.2f}x that of defaults on {r.cost_basis}" if r.cost is not None else ""
        )
        if r.all_pass:
            return [f"recommendation: {r.level}: repeatable bitwise for {scope}{cost}"]
        failing = ", ".join(f"{p} ({why})" for p, why in r.failing)
        return [
            f"recommendation: {r.level} comes closest, but no level made {scope} repeat",
            f"  still failing under {r.level}: {failing}{cost}",
        ]


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _verdict(ok: bool | None) -> str:
    return {True: "ok", False: "FAIL", None: "-"}[ok]
