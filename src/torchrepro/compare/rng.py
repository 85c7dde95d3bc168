"""The RNG states of two runs compared: which sources differ, from when, and whether drawn.

A record's ``rng`` section holds, after every step, a digest of each RNG source in use
(:mod:`torchrepro.records.format`). A state that differs is no divergence by itself: only
what the training computes is (:mod:`~torchrepro.compare.entries`). What it means depends
on whether the training draws from that source: one whose digest stays the same from step
to step, in both runs, was never drawn from over those steps and cannot have changed
anything they computed.

Examples:
    >>> a = [{"step": s, "rng": {"torch": "t", "numpy": "n1"}} for s in range(3)]
    >>> b = [{"step": s, "rng": {"torch": "t", "numpy": "n2"}} for s in range(3)]
    >>> (found,) = rng_differences(a, b)
    >>> found.source, found.step, found.drawn
    ('numpy', 0, False)
    >>> print(found.describe())  # doctest: +NORMALIZE_WHITESPACE
    numpy's global RNG differs between the runs from step 0; the training never drew from
    it (its state stayed the same over the 3 steps compared, in both runs)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torchrepro.records.format import RANKS, RNG, STEP

__all__ = ["RngDifference", "rng_differences", "source_words"]

# The sources of torchrepro._sources by name, in words (that module imports torch).
_WORDS = {
    "python": "Python's random module",
    "numpy": "numpy's global RNG",
    "torch": "torch's CPU generator",
    "cuda": "torch's CUDA generators",
    "mps": "torch's MPS generator",
    "xpu": "torch's XPU generator",
}


def source_words(name: str) -> str:
    """An RNG source of the record's ``rng`` section, in words.

    Examples:
        >>> source_words("numpy"), source_words("generator:augment")
        ("numpy's global RNG", "the registered generator 'augment'")
    """
    if name in _WORDS:
        return _WORDS[name]
    if ":" in name:
        return f"the registered generator {name.split(':', 1)[1]!r}"
    return f"the RNG source {name!r}"


@dataclass(frozen=True)
class RngDifference:
    """An RNG source whose state differs between two runs.

    Attributes:
        source: Its name in the record (``"numpy"``, ``"torch"``, ``"generator:aug"``).
        entry: Position, in run A's record, of the first entry where it differs.
        step: That entry's step.
        rank: Under torchrun, the rank whose state differs; None for one process.
        drew: Per run (A, B), whether the training drew from it: its digest changed
            between the steps compared. None when fewer than two steps were compared.
        steps: How many steps were compared.
    """

    source: str
    entry: int
    step: int | None
    rank: int | None = None
    drew: tuple[bool | None, bool | None] = (None, None)
    steps: int = 0

    @property
    def drawn(self) -> bool | None:
        """Whether the training drew from it in either run; None when that cannot be told.

        Examples:
            >>> RngDifference("numpy", 0, 0, drew=(False, True)).drawn
            True
        """
        if True in self.drew:
            return True
        return None if None in self.drew else False

    def describe(self, runs: tuple[str, str] = ("run A", "run B")) -> str:
        """The difference and what the record shows about the draws, in words.

        Examples:
            >>> found = RngDifference("torch", 2, 2, drew=(False, True))
            >>> print(found.describe(("run 1", "run 2")))  # doctest: +NORMALIZE_WHITESPACE
            torch's CPU generator differs between the runs from step 2; run 2 drew from it
            and run 1 did not (its state changed between steps in run 2 only)
        """
        where = f" on rank {self.rank}" if self.rank is not None else ""
        head = f"{source_words(self.source)} differs between the runs from step {self.step}{where}"
        a, b = self.drew
        if a is False and b is False:
            return (
                f"{head}; the training never drew from it (its state stayed the same over the "
                f"{self.steps} steps compared, in both runs)"
            )
        if a is True and b is True:
            return f"{head}; the training draws from it (its state changed between steps)"
        if a is not None and b is not None:
            drew, did_not = (runs[0], runs[1]) if a else (runs[1], runs[0])
            return (
                f"{head}; {drew} drew from it and {did_not} did not (its state changed "
                f"between steps in {drew} only)"
            )
        return f"{head}; whether the training draws from it cannot be told from one step"


def _rng_of(entry: dict[str, Any], rank: int | None) -> dict[str, Any]:
    if rank is not None:
        ranks = entry.get(RANKS) or []
        entry = ranks[rank] if rank < len(ranks) else {}
    found: dict[str, Any] = entry.get(RNG) or {}
    return found


def _ranks(x: dict[str, Any], y: dict[str, Any]) -> Iterator[int | None]:
    if RANKS in x and RANKS in y:
        yield from range(min(len(x[RANKS]), len(y[RANKS])))
    else:
        yield None


def rng_differences(
    a: Sequence[dict[str, Any]],
    b: Sequence[dict[str, Any]],
    *,
    skip: int = 0,
    count: int | None = None,
) -> tuple[RngDifference, ...]:
    """The RNG sources whose states differ between two runs' entries, first to differ first.

    Entries merged from several ranks (a ``"ranks"`` list) are compared rank by rank.

    Args:
        a, b: The step entries of the two runs (see :mod:`torchrepro.records.format`).
        skip: Entries of ``a`` to pass over (``b`` is a resumed process counting from there).
        count: Compare at most this many entries (those the verdict compared).

    Examples:
        >>> a = [{"step": 0, "rng": {"torch": "t0"}}, {"step": 1, "rng": {"torch": "t1"}}]
        >>> b = [{"step": 0, "rng": {"torch": "t0"}}, {"step": 1, "rng": {"torch": "x1"}}]
        >>> rng_differences(a, b)
        (RngDifference(source='torch', entry=1, step=1, rank=None, drew=(True, True), steps=2),)
    """
    ours, theirs = a[skip:], b
    n = min(len(ours), len(theirs), *([count] if count is not None else []))
    first: dict[tuple[int | None, str], int] = {}
    for i in range(n):
        for rank in _ranks(ours[i], theirs[i]):
            rx, ry = _rng_of(ours[i], rank), _rng_of(theirs[i], rank)
            for name in [*rx, *(k for k in ry if k not in rx)]:
                if rx.get(name) != ry.get(name):
                    first.setdefault((rank, name), i)

    def drew(entries: Sequence[dict[str, Any]], rank: int | None, name: str) -> bool | None:
        digests = {_rng_of(entry, rank).get(name) for entry in entries[:n]}
        return len(digests) > 1 if n >= 2 else None

    found = [
        RngDifference(
            name,
            skip + i,
            ours[i].get(STEP, skip + i),
            rank,
            (drew(ours, rank, name), drew(theirs, rank, name)),
            n,
        )
        for (rank, name), i in first.items()
    ]
    return tuple(sorted(found, key=lambda d: (d.entry, -1 if d.rank is None else d.rank)))
