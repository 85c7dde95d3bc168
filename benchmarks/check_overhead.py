"""Benchmark: wall time of `torchrepro check` against two plain runs of the same script.

Run: python benchmarks/check_overhead.py [--epochs N]

Times, in one run of this script, on examples/train.py (a small CPU CNN, 2-worker
DataLoader): two plain runs one after the other (the baseline), then `torchrepro check`
in lockstep (the two runs side by side) and in sequential mode, each recording
parameters, gradients, the batch and RNG digests at every step. Target (issue #5): at most
1.1x of the two plain runs when the runs are identical.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{command} failed:\n{result.stdout}\n{result.stderr}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    script = [sys.executable, "examples/train.py", "--epochs", str(args.epochs)]
    check = [sys.executable, "-m", "torchrepro", "check", "--seed", "11"]

    plain = timed(script) + timed(script)
    lockstep = timed([*check, "--", *script])
    sequential = timed([*check, "--sequential", "--", *script])
    print(f"examples/train.py --epochs {args.epochs}, torch threads per run: default")
    print(f"  two plain runs, one after the other  {plain:7.2f} s   1.00x")
    print(
        f"  torchrepro check --lockstep          {lockstep:7.2f} s   {lockstep / plain:.2f}x"
        "  (target <= 1.1x)"
    )
    print(
        f"  torchrepro check --sequential        {sequential:7.2f} s   "
        f"{sequential / plain:.2f}x  (target <= 1.1x)"
    )


if __name__ == "__main__":
    main()
