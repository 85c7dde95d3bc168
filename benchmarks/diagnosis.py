"""Benchmark: how often `torchrepro check` names a planted cause right (issue 14).

Run: python benchmarks/diagnosis.py [-k SUBSTRING] [--keep DIR]

Runs every case of tests/test_diagnosis.py (a cause planted at step 2 of a small training:
MLP, CNN, LSTM, transformer, HF BERT) through `torchrepro check --json`, and scores four
answers per case: the step, the module (full path), the op and the cause category. Prints
one row per case (what was expected, and what the report said where it was wrong), then
the score. Target: >= 90 % of the answers right.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_diagnosis import CASES, Answer, answer, expected, run_case  # noqa: E402

TARGET = 0.90


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only the cases whose name contains this")
    parser.add_argument("--keep", default=None, help="keep each case's report in DIR/CASE")
    args = parser.parse_args()
    cases = [case for case in CASES if args.k in case.name]
    root = Path(args.keep or tempfile.mkdtemp(prefix="diagnosis-"))
    width = max(len(case.name) for case in cases)
    print(f"{'case':<{width}}  " + "".join(f"{field:<10}" for field in Answer._fields) + "time")
    right = whole = 0
    misses = []
    started = time.perf_counter()
    for case in cases:
        began = time.perf_counter()
        want = expected(case)
        try:
            got = answer(run_case(case, root / case.name)[0])
        except AssertionError as failure:  # check itself failed: every answer is wrong
            got = Answer(None, None, None, f"check failed: {str(failure).splitlines()[0]}")
        marks = [w == g for w, g in zip(want, got)]
        right, whole = right + sum(marks), whole + all(marks)
        cells = "".join(f"{'right' if mark else 'WRONG':<10}" for mark in marks)
        print(f"{case.name:<{width}}  {cells}{time.perf_counter() - began:4.1f} s", flush=True)
        misses += [
            f"  {case.name:<{width}}  {field}: expected {w}, reported {g}"
            for field, w, g, mark in zip(Answer._fields, want, got, marks)
            if not mark
        ]
    total = len(Answer._fields) * len(cases)
    score = right / total if total else 0.0
    verdict = "meets" if score >= TARGET else "below"
    print(
        f"\nscore: {right}/{total} answers right = {score:.0%} ({verdict} the target "
        f">= {TARGET:.0%}); {whole}/{len(cases)} cases right in all four; "
        f"{time.perf_counter() - started:.0f} s"
    )
    if misses:
        print("misses:", *misses, sep="\n")


if __name__ == "__main__":
    main()
