"""Start-up cost of ``torchrepro run``: ``torchrepro run -- python -c "import torch"``
against the plain ``python -c "import torch"``, as a ratio of wall times (target <= 1.05x).

The two commands alternate, so drifts of the machine hit both alike; the figure is the
ratio of their medians. torchrepro's modules are byte-compiled first, as ``pip install``
does (torch's already are), so neither side pays for compiling.
Run: ``python benchmarks/startup.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import time

PLAIN = [sys.executable, "-c", "import torch"]
UNDER_RUN = [sys.executable, "-m", "torchrepro", "run", "--seed", "11", "--", *PLAIN]


def wall(command: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHREPRO_")}
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    repeats = parser.parse_args().repeats
    import torchrepro

    compileall.compile_dir(os.path.dirname(torchrepro.__file__), quiet=1)
    wall(PLAIN), wall(UNDER_RUN)  # warm the file cache
    plain, under = [], []
    for _ in range(repeats):
        plain.append(wall(PLAIN))
        under.append(wall(UNDER_RUN))
    p, u = statistics.median(plain), statistics.median(under)
    print(f"python -c 'import torch':                 {p * 1000:7.0f} ms (median of {repeats})")
    print(f"torchrepro run -- python -c 'import torch': {u * 1000:7.0f} ms")
    print(f"ratio: {u / p:.3f}x (target <= 1.05x)")


if __name__ == "__main__":
    main()
