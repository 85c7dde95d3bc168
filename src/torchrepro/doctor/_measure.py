"""The measuring process of `torchrepro doctor`: probes under determinism levels, as JSON lines.

`torchrepro doctor` starts ``python -m torchrepro.doctor._measure`` in fresh processes: twice
for each group of levels (the second run only computes each result's digest, for the
comparison across processes), once for the self-test, and once to trace and time a model
given with ``--model``. Each writes one JSON line per result as soon as it has it and flushes,
so a process stopped at the time limit leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

import torch

from torchrepro import detops
from torchrepro._levels import LEVELS, Flags, Level
from torchrepro.digests import fingerprint, same_bits
from torchrepro.doctor.probes import Probe, Step, Unavailable, select_probes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


def _call(step: Step, device: torch.device) -> tuple[list[torch.Tensor], float]:
    _sync(device)
    start = time.perf_counter()
    out = [t.detach() for t in step()]
    _sync(device)
    return out, time.perf_counter() - start


def measure(
    probe: Probe,
    device: torch.device,
    levels: Sequence[Level],
    *,
    repeats: int,
    quick: bool,
) -> Iterator[dict[str, Any]]:
    """One result per level: whether `probe` raised, repeated bitwise over `repeats` calls
    (0: only its digest is computed), its median time, and the replacements that served it.

    The levels' switches are put back as they were afterwards.

    Examples:
        >>> from torchrepro.doctor.probes import select_probes
        >>> [probe] = select_probes(["cumsum"])
        >>> [r["within"] for r in measure(probe, torch.device("cpu"), LEVELS[:2], repeats=2,
        ...                               quick=True)]
        [True, True]
    """
    base = {"probe": probe.name, "device": str(device)}
    try:
        step = probe.build(device, quick)
    except Unavailable as why:
        for level in levels:
            yield {**base, "level": level.name, "available": False, "reason": str(why)}
        return
    saved = Flags.capture()
    runs = {level.name: _Run() for level in levels}
    try:
        # Levels take turns call by call, so that load from elsewhere and the machine's
        # warming up spread over all of them instead of landing on the first.
        for round_ in range(repeats + 1):
            for level in levels:
                level.flags.apply()
                runs[level.name].call(step, device, timed=round_ > 0)
    finally:
        saved.apply()
    for level in levels:
        yield {**base, "level": level.name, "available": True, **runs[level.name].result()}


class _Run:
    """The calls of one probe under one level: the first result, and whether all matched."""

    def __init__(self) -> None:
        self.first: list[torch.Tensor] | None = None
        self.same = True
        self.seconds: list[float] = []
        self.error: str | None = None
        self.served: set[str] = set()

    def call(self, step: Step, device: torch.device, *, timed: bool) -> None:
        if self.error is not None:
            return
        with detops.served() as served:
            try:
                out, took = _call(step, device)
            except RuntimeError as error:  # strict mode refusing an op is a finding
                self.error = _first_line(error)
                out, took = [], 0.0
        self.served.update(served)
        if self.error is not None:
            return
        if self.first is None:  # the first call is also the warm-up: kernels, allocator
            self.first = out
        else:
            self.same = self.same and same_bits(self.first, out)
        if timed:
            self.seconds.append(took)

    def result(self) -> dict[str, Any]:
        if self.error is not None or self.first is None:
            return {"raised": True, "error": self.error, "served": sorted(self.served)}
        return {
            "raised": False,
            "error": None,
            "within": self.same if self.seconds else None,
            "digest": str(fingerprint({str(i): t for i, t in enumerate(self.first)})),
            "ms": statistics.median(self.seconds) * 1e3 if self.seconds else None,
            "served": sorted(self.served),
        }


def _emit(out: TextIO, record: dict[str, Any]) -> None:
    out.write(json.dumps(record) + "\n")
    out.flush()


def _probes(args: argparse.Namespace, out: TextIO) -> None:
    device = torch.device(args.device)
    levels = [level for level in LEVELS if level.name in args.levels.split(",")]
    for probe in select_probes(args.only, args.probe):
        for record in measure(probe, device, levels, repeats=args.repeats, quick=args.quick):
            _emit(out, record)


def _self_test(args: argparse.Namespace, out: TextIO) -> None:
    from torchrepro.doctor import selftest

    for record in selftest.run(torch.device(args.device)):
        _emit(out, record)


def _model(args: argparse.Namespace, out: TextIO) -> None:
    from torchrepro.doctor import _model

    _emit(out, _model.trace_and_cost(args.model, torch.device(args.device), args.steps))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the measuring process; writes JSON lines to ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m torchrepro.doctor._measure")
    parser.add_argument("what", choices=("probes", "self-test", "model"))
    parser.add_argument("--device", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--levels", default=",".join(level.name for level in LEVELS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--probe", action="append", default=[])
    parser.add_argument("--model", default=None)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    run = {"probes": _probes, "self-test": _self_test, "model": _model}[args.what]
    with open(args.out, "a", encoding="utf-8") as out:
        run(args, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
