"""How far apart two runs are, from the sizes their records keep next to each digest.

Each float tensor of an entry has ``[sum |x|, L2, max |x|]``
(:mod:`torchrepro.records._stats`). Two tensors that differ by ``d`` elementwise have
statistics that differ by at most ``|d|``'s own norms, so a gap between statistics is a
*lower bound* on how far the tensors are apart: what is reported is said to be that.

Examples:
    >>> a = {"step": 0, "params": {"w": "aa"}, "stats": {"params": [[4.0, 2.0, 1.0]]}}
    >>> b = {"step": 0, "params": {"w": "ab"}, "stats": {"params": [[4.0, 2.0002, 1.0]]}}
    >>> print(entry_gap(a, b, ["params.w"]).describe())
    params.w: L2 differs by 0.0002 (relative 1e-04), at least
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torchrepro.records.format import LOG, PARAMS, RANKS, entry_stats, entry_values, section_of

__all__ = ["Gap", "entry_gap", "gap_series", "outside_tolerance", "params_gap"]

_NAMES = ("sum |x|", "L2", "max |x|")


def _relative(a: float, b: float) -> float:
    scale = max(abs(a), abs(b))
    if math.isnan(a) or math.isnan(b):
        return math.inf if math.isnan(a) != math.isnan(b) else 0.0
    return abs(a - b) / scale if scale else 0.0


@dataclass(frozen=True)
class Gap:
    """The largest difference between two runs' statistics of one value.

    Attributes:
        key: The value (``"params.fc.weight"``).
        stat: Which statistic: ``"sum |x|"``, ``"L2"`` or ``"max |x|"``.
        a, b: Its value in each run.
    """

    key: str
    stat: str
    a: float
    b: float

    @property
    def absolute(self) -> float:
        """``|a - b|``: a lower bound on the elementwise difference's norm of that kind."""
        return abs(self.a - self.b)

    @property
    def relative(self) -> float:
        """``|a - b| / max(|a|, |b|)``."""
        return _relative(self.a, self.b)

    def describe(self) -> str:
        """One line for a report."""
        return (
            f"{self.key}: {self.stat} differs by {self.absolute:.3g} "
            f"(relative {self.relative:.0e}), at least"
        )


def _gaps(a: dict[str, Any], b: dict[str, Any], keys: Sequence[str]) -> list[Gap]:
    sa, sb = entry_stats(a), entry_stats(b)
    found = []
    for key in keys:
        if key in sa and key in sb:
            for name, x, y in zip(_NAMES, sa[key], sb[key]):
                found.append(Gap(key, name, x, y))
    return found


def entry_gap(
    a: dict[str, Any], b: dict[str, Any], keys: Sequence[str], rank: int | None = None
) -> Gap | None:
    """The largest relative gap among ``keys`` of two entries; None where none has sizes.

    ``rank`` picks that rank's entries out of entries merged from several ranks.
    """
    if rank is not None and RANKS in a and RANKS in b:
        a, b = a[RANKS][rank], b[RANKS][rank]
    gaps = [g for g in _gaps(a, b, keys) if g.a != g.b]
    return max(gaps, key=lambda g: (g.relative, g.absolute), default=None)


def params_gap(a: dict[str, Any], b: dict[str, Any]) -> float:
    """The largest relative gap over the parameters of two entries (0.0 when equal).

    Entries merged from several ranks (``"ranks"``) give the largest over the ranks.

    Examples:
        >>> e = lambda l2: {"params": {"w": "x"}, "stats": {"params": [[1.0, l2, 1.0]]}}
        >>> params_gap(e(1.0), e(1.1))
        0.09090909090909098
    """
    if RANKS in a and RANKS in b:
        return max(map(params_gap, a[RANKS], b[RANKS]), default=0.0)
    keys = [k for k in entry_stats(a) if section_of(k) == PARAMS]
    gap = entry_gap(a, b, keys)
    return 0.0 if gap is None else gap.relative


def gap_series(
    entries_a: Sequence[dict[str, Any]], entries_b: Sequence[dict[str, Any]]
) -> list[float]:
    """Per pair of entries, the largest relative gap over the parameters (0.0 when equal).

    How a difference grows step by step: what ``check --plot`` draws and diff reports.

    Examples:
        >>> e = lambda l2: {"params": {"w": "x"}, "stats": {"params": [[1.0, l2, 1.0]]}}
        >>> gap_series([e(1.0), e(1.0)], [e(1.0), e(1.1)])
        [0.0, 0.09090909090909098]
    """
    return [params_gap(a, b) for a, b in zip(entries_a, entries_b)]


def _close(x: float, y: float, rtol: float, atol: float) -> bool:
    return x == y or abs(x - y) <= atol + rtol * abs(y)


def outside_tolerance(
    a: dict[str, Any], b: dict[str, Any], keys: Sequence[str], rtol: float, atol: float
) -> list[str]:
    """The ``keys`` whose difference is beyond ``atol + rtol * |b|``.

    Logged numbers are compared as numbers; a value with sizes by its three statistics
    (not elementwise: within tolerance is not identical); anything else (a batch, an RNG
    state, a tensor without sizes) only bitwise, so it is outside whenever it differs.

    Examples:
        >>> a = {"params": {"w": "a"}, "stats": {"params": [[4.0, 2.0, 1.0]]}, "log": {"l": 0.5}}
        >>> b = {"params": {"w": "b"}, "stats": {"params": [[4.0, 2.0002, 1.0]]}, "log": {"l": 0.6}}
        >>> outside_tolerance(a, b, ["params.w", "log.l"], rtol=1e-3, atol=0.0)
        ['log.l']
    """
    sa, sb = entry_stats(a), entry_stats(b)
    va, vb = entry_values(a), entry_values(b)
    outside = []
    for key in keys:
        if key in sa and key in sb:
            close = all(_close(x, y, rtol, atol) for x, y in zip(sa[key], sb[key]))
        elif section_of(key) == LOG and key in va and key in vb:
            x, y = json.loads(va[key]), json.loads(vb[key])
            numbers = all(isinstance(v, (int, float)) for v in (x, y))
            close = numbers and _close(float(x), float(y), rtol, atol)
        else:
            close = False
        if not close:
            outside.append(key)
    return outside
