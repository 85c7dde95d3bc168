"""Per-test cost of torchrepro's pytest plugin on a generated 1,000-test suite, against the
same suite with the plugin off (``-p no:torchrepro``); target <= 0.3 ms a test.

The suite has 10 modules of 100 tests (a tenth parametrized, a module fixture in each),
every test drawing from torch. Sessions run in this one process (``pytest.main``), plugin
on and off in turn, so start-up and imports are paid once and the machine's drifts hit both
sides; the per-test cost is ``(on - off) / 1000`` from the fastest session of each.
Run: ``python benchmarks/pytest_plugin.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

import pytest

MODULE = """
import pytest
import torch


@pytest.fixture(scope="module")
def table():
    return torch.rand(4)


@pytest.mark.parametrize("i", range(10))
def test_param(i, table):
    assert table.shape == (4,)

"""


def write_suite(folder: Path, modules: int, tests: int) -> None:
    folder.mkdir(parents=True)
    for m in range(modules):
        body = MODULE + "".join(
            f"def test_{t}():\n    assert torch.rand(1).item() < 2\n\n" for t in range(tests - 10)
        )
        (folder / f"test_m{m}.py").write_text(body)


def session(folder: Path, plugin: bool) -> float:
    off = [] if plugin else ["-p", "no:torchrepro"]
    args = ["-q", "-p", "no:randomly", "-p", "no:cacheprovider", *off, str(folder)]
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        start = time.perf_counter()
        code = pytest.main(args)
        took = time.perf_counter() - start
    assert code == 0, f"the generated suite failed (exit {code})"
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    repeats = parser.parse_args().repeats
    with tempfile.TemporaryDirectory() as tmp:
        suite = Path(tmp) / "suite"
        write_suite(suite, 10, 100)
        session(suite, True), session(suite, False)  # imports, caches
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(repeats):
            for plugin in (True, False):
                times[plugin].append(session(suite, plugin))
    on, off = min(times[True]), min(times[False])
    per_test = (on - off) / 1000 * 1e3
    print(
        f"1,000 tests, fastest session of {repeats}: plugin on {on:.3f} s, off {off:.3f} s "
        f"({on / off:.2f}x)"
    )
    print(f"plugin cost per test: {per_test:.3f} ms (target <= 0.3 ms)")


if __name__ == "__main__":
    main()
