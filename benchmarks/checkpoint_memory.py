"""Peak memory and time of save_checkpoint / load_checkpoint against torch.save / torch.load.

    python benchmarks/checkpoint_memory.py [--size-mib 1024] [--repeats 3]

The checkpoint is 16 float32 tensors (a model's state dict) of ``--size-mib`` MiB in all,
1 GiB by default (``--size-mib 64 --repeats 1`` for a quick run). Each measurement runs in
a fresh child process that imports torch and torchrepro, does one thing, and reports its
peak resident memory (``ru_maxrss``, so the figures include the interpreter and torch) and
the seconds the one thing took. Memory is measured once per operation (it does not move
between runs); times are the median of ``--repeats`` children. Targets: memory <= 1.1x
torch's own figure, with and without ``mmap``. The integrity check's cost is printed both
on its own (digesting every record of the file) and inside the load and save it is part of;
save_checkpoint also fsyncs the file and its directory, which torch.save does not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SETUP = """
import json, resource, sys, time
import torch
import torchrepro
from torchrepro.state import _archive, _zip
size_mib, folder = int(sys.argv[1]), sys.argv[2]
torch_file, ours_file = folder + "/torch.pt", folder + "/ours.pt"

def checkpoint():
    part = size_mib * (1 << 20) // 4 // 16
    return {f"layer{n}.weight": torch.full((part,), float(n + 1)) for n in range(16)}

def verify(path):
    with _zip.open_archive(path, _zip.CHECKPOINT) as file:
        assert _archive.check_archive(file, path, _zip.CHECKPOINT) is not None
"""

OPERATIONS = {
    "torch.save": "value = checkpoint(); start = time.perf_counter(); "
    "torch.save(value, torch_file)",
    "save_checkpoint": "value = checkpoint(); start = time.perf_counter(); "
    "torchrepro.save_checkpoint(ours_file, value)",
    "torch.load": "start = time.perf_counter(); torch.load(torch_file, weights_only=True)",
    "load_checkpoint": "start = time.perf_counter(); torchrepro.load_checkpoint(ours_file)",
    "torch.load(mmap=True)": "start = time.perf_counter(); "
    "torch.load(torch_file, weights_only=True, mmap=True)",
    "load_checkpoint(mmap=True)": "start = time.perf_counter(); "
    "torchrepro.load_checkpoint(ours_file, mmap=True)",
    "integrity check alone": "start = time.perf_counter(); verify(ours_file)",
}
REPORT = """
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "peak": peak}))
"""


def measure(operation: str, size_mib: int, folder: str) -> dict[str, float]:
    code = SETUP + OPERATIONS[operation] + REPORT
    result = subprocess.run(
        [sys.executable, "-c", code, str(size_mib), folder],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(result.stdout.splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in OPERATIONS}
        for _ in range(args.repeats):  # interleaved, so a drift of the machine hits all alike
            for name in OPERATIONS:
                runs[name].append(measure(name, args.size_mib, folder))
        sizes = {name: Path(folder, name).stat().st_size for name in ("torch.pt", "ours.pt")}
    peak = {name: runs[name][0]["peak"] / 2**30 for name in runs}
    seconds = {name: statistics.median(r["seconds"] for r in runs[name]) for name in runs}
    print(
        f"checkpoint of {args.size_mib} MiB: torch.save's file {sizes['torch.pt']} bytes, "
        f"save_checkpoint's {sizes['ours.pt']} bytes; times are medians of {args.repeats}"
    )
    print(f"{'':28}{'peak memory':>14}{'seconds':>10}")
    for name in OPERATIONS:
        print(f"{name:28}{peak[name]:>10.3f} GiB{seconds[name]:>10.3f}")
    pairs = [
        ("save_checkpoint", "torch.save"),
        ("load_checkpoint", "torch.load"),
        ("load_checkpoint(mmap=True)", "torch.load(mmap=True)"),
    ]
    print(f"\n{'torchrepro / torch':52}{'memory (target <= 1.1x)':>24}{'time':>8}")
    for ours, theirs in pairs:
        print(
            f"{ours + ' / ' + theirs:52}{peak[ours] / peak[theirs]:>23.3f}x"
            f"{seconds[ours] / seconds[theirs]:>7.2f}x"
        )
    check = seconds["integrity check alone"]
    print(
        f"integrity check alone: {check:.3f} s = {check / seconds['torch.load']:.2f}x the time "
        f"of torch.load, {check / seconds['torch.save']:.2f}x that of torch.save"
    )


if __name__ == "__main__":
    main()
