"""Checkpoint and RNG state files: what loading refuses before it reads, integrity of every
byte, what saving refuses, stale temporary files, and file permissions."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import random
import re
import signal
import stat
import subprocess
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xxhash

import torchrepro
from conftest import PYTHON, child_env, time_bound
from torchrepro import _files
from torchrepro.errors import StateError
from torchrepro.state import load_rng, save_rng

LOADERS: dict[str, Callable[[Path], Any]] = {
    "load_rng": load_rng,
    "load_checkpoint": torchrepro.load_checkpoint,
}


@pytest.fixture(autouse=True)
def _bounded() -> Iterator[None]:
    """A loader that blocks (on a FIFO, say) fails its test instead of hanging the suite."""
    with time_bound(60, "a loader blocked on its input"):
        yield


def _same(left: Any, right: Any) -> bool:
    """Equal content: same types and structure, tensors equal bit for bit."""
    if isinstance(left, torch.Tensor):
        return (
            type(left) is type(right)
            and (left.dtype, left.shape) == (right.dtype, right.shape)
            and torch.equal(_bytes(left), _bytes(right))
        )
    if isinstance(left, dict):
        return (
            type(left) is type(right)
            and list(left) == list(right)
            and all(_same(left[key], right[key]) for key in left)
        )
    if isinstance(left, list | tuple):
        return (
            type(left) is type(right)
            and len(left) == len(right)
            and all(_same(a, b) for a, b in zip(left, right))
        )
    return type(left) is type(right) and bool(left == right)


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def _training_checkpoint() -> dict[str, Any]:
    torchrepro.seed_everything(15)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 2))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(4, 8)).sum().backward()
    optimizer.step()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": 1,
        "torchrepro": torchrepro.state_dict(),
    }


# ---------------------------------------------------------------- refused before reading


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda path: None, "no such file or directory"),
        (lambda path: path.mkdir(), "a directory, not a regular file"),
        (lambda path: os.mkfifo(path), r"a FIFO \(named pipe\), not a regular file"),
        (
            lambda path: path.symlink_to("/dev/zero"),
            r"a character device \(like /dev/zero\), not a regular file",
        ),
    ],
    ids=["missing", "directory", "fifo", "symlink-to-dev-zero"],
)
def test_what_is_not_a_regular_file_is_refused_at_once(
    tmp_path: Path, loader: str, make: Callable[[Path], None], reason: str
) -> None:
    path = tmp_path / "ckpt.pt"
    make(path)
    expected = f"{reason}; expected a regular file written by torchrepro.*Pass the path"
    with pytest.raises(StateError, match=expected):
        LOADERS[loader](path)


def test_gigabytes_of_junk_are_refused_from_their_ends_with_bounded_memory(
    tmp_path: Path,
) -> None:
    """3 GiB of zeros, and 3 GiB that start like a zip: refused in a process whose peak
    memory grows by a few MiB (reading either would take 3 GiB)."""
    junk, zipped = tmp_path / "junk.pt", tmp_path / "zipped.pt"
    for path, start in ((junk, b""), (zipped, b"PK\x03\x04")):
        with open(path, "wb") as file:
            file.write(start)
            file.truncate(3 << 30)  # sparse: no disk space used
    code = (
        "import json, resource, sys, torchrepro\n"
        "from torchrepro.state import load_rng\n"
        "torchrepro.load_checkpoint  # imports torch and the state module before measuring\n"
        "before, messages = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, []\n"
        "for path in sys.argv[1:]:\n"
        "    for loader in (load_rng, torchrepro.load_checkpoint):\n"
        "        try:\n"
        "            loader(path)\n"
        "        except torchrepro.TorchReproError as error:\n"
        "            messages.append(str(error))\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(json.dumps({'grown_kib': grown, 'messages': messages}))\n"
    )
    result = subprocess.run(
        [PYTHON, "-c", code, str(junk), str(zipped)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["grown_kib"] < 64 << 10
    _, junk_message, _, zip_message = report["messages"]
    assert "is not a torchrepro checkpoint file" in junk_message
    assert "3221225472 bytes starting with" in junk_message
    assert "is damaged: it does not end with a zip directory" in zip_message


def test_a_zip_that_torch_save_did_not_write_is_refused_before_its_payload(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ckpt.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00." * 1000)
    with pytest.raises(StateError, match="record 'data.pkl' is compressed"):
        torchrepro.load_checkpoint(path)


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_a_bare_pickle_is_never_unpickled(tmp_path: Path, loader: str) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(StateError, match="bare pickle.*not unpickled, as a pickle can run code"):
        LOADERS[loader](path)


# ---------------------------------------------------------------- integrity


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Any]:
    path = tmp_path_factory.mktemp("checkpoint") / "ckpt.pt"
    with torchrepro.isolate_rng():
        checkpoint = _training_checkpoint()
    torchrepro.save_checkpoint(path, checkpoint)
    return path.read_bytes(), checkpoint


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_a_hundred_random_bit_flips_are_each_refused_as_damage_or_change_nothing(
    tmp_path: Path, saved_checkpoint: tuple[bytes, Any], mmap: bool
) -> None:
    saved, expected = saved_checkpoint
    flips, outcomes = random.Random(15), collections.Counter[str]()
    path = tmp_path / "flipped.pt"
    for _ in range(100):
        content = bytearray(saved)
        position = flips.randrange(len(content))
        content[position] ^= 1 << flips.randrange(8)
        path.write_bytes(content)
        try:
            loaded = torchrepro.load_checkpoint(path, mmap=mmap)
        except StateError as error:
            message = str(error)
            assert re.search(r"is damaged: .+\. Nothing was loaded\. Restore", message), message
            assert "run code" not in message, message
            outcomes["refused"] += 1
        else:  # the flip hit bytes nothing reads: zip padding, a timestamp, a data descriptor
            assert _same(loaded, expected), f"a flip at byte {position} changed the content"
            outcomes["identical"] += 1
    assert outcomes["refused"] >= 50, outcomes


def _flip_at(path: Path, needle: bytes) -> None:
    content = bytearray(path.read_bytes())
    content[content.index(needle) + 1] ^= 0x04
    path.write_bytes(content)


def test_damage_is_named_by_the_part_it_hit(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.copy_(torch.arange(12.0).reshape(3, 4) + 0.5)
    checkpoint = {"model": model.state_dict(), "marker_key": 1}
    parts = {
        model.weight.detach().numpy().tobytes()[:8]: (
            r"tensor storage data/\d+ \(48 bytes, the data of checkpoint\['model'\]\['weight'\]\)"
        ),
        b"marker_key": r"the checkpoint's structure \(data\.pkl",
        b'"records"': r"its integrity record \(torchrepro\.integrity\) is damaged",
    }
    for needle, part in parts.items():
        path = torchrepro.save_checkpoint(tmp_path / "ckpt.pt", checkpoint)
        _flip_at(path, needle)
        with pytest.raises(StateError, match=f"is damaged: {part}"):
            torchrepro.load_checkpoint(path)


def test_an_integrity_record_of_another_version_is_refused_not_guessed(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"w": torch.ones(2)}, path)
    body = json.dumps({"format": "torchrepro.integrity", "version": 2}).encode()
    with zipfile.ZipFile(path, "a") as archive:
        folder = archive.namelist()[0].partition("/")[0]
        archive.writestr(
            f"{folder}/torchrepro.integrity",
            xxhash.xxh3_128(body).hexdigest().encode() + b"\n" + body,
        )
    with pytest.raises(StateError, match="integrity record version 2; this torchrepro reads 1"):
        torchrepro.load_checkpoint(path)


def test_plain_torch_load_reads_a_saved_checkpoint_as_saved(
    tmp_path: Path, saved_checkpoint: tuple[bytes, Any]
) -> None:
    saved, expected = saved_checkpoint
    path = tmp_path / "ckpt.pt"
    path.write_bytes(saved)
    assert _same(torch.load(path, weights_only=True), expected)
    assert _same(torch.load(path, weights_only=True, mmap=True), expected)
    assert _same(torchrepro.load_checkpoint(path, mmap=True), expected)


def test_a_file_torch_save_wrote_loads_with_a_warning_that_it_was_not_checked(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"w": torch.ones(2)}, path)
    with pytest.warns(UserWarning, match="no torchrepro integrity record"):
        loaded = torchrepro.load_checkpoint(path)
    assert _same(loaded, {"w": torch.ones(2)})
    # An RNG state carries a checksum of its own content, so there is nothing to warn of.
    torch.save(torchrepro.capture_rng().state_dict(), path)
    assert load_rng(path) == torchrepro.capture_rng()


# ---------------------------------------------------------------- what saving accepts


def test_everything_safe_loading_reads_round_trips_shared_storage_included(
    tmp_path: Path,
) -> None:
    base = torch.arange(10)
    value = {
        "training": _training_checkpoint(),
        "plain": (1, 2.5, 1 + 2j, "s", b"\x00", None, True, [1, {2: 3}], {4, 5}),
        "torch": [torch.Size([2, 3]), torch.float16, torch.device("cpu")],
        "tensors": [base, base[2:5], torch.ones(2, dtype=torch.bfloat16), torch.eye(2).T],
        "parameter": torch.nn.Parameter(torch.ones(3)),
    }
    path = torchrepro.save_checkpoint(tmp_path / "ckpt.pt", value)
    loaded = torchrepro.load_checkpoint(path)
    assert _same(loaded["training"], value["training"])
    assert loaded["plain"] == value["plain"] and loaded["torch"] == value["torch"]
    assert all(_same(a, b) for a, b in zip(loaded["tensors"], value["tensors"]))
    assert loaded["tensors"][1].untyped_storage().data_ptr() == (
        loaded["tensors"][0].untyped_storage().data_ptr()
    )
    assert isinstance(loaded["parameter"], torch.nn.Parameter)


@dataclasses.dataclass
class _Allowed:
    x: int


def test_a_class_allowed_while_saving_must_be_allowed_while_loading(tmp_path: Path) -> None:
    with torch.serialization.safe_globals([_Allowed]):
        path = torchrepro.save_checkpoint(tmp_path / "ckpt.pt", {"a": _Allowed(1)})
        assert torchrepro.load_checkpoint(path) == {"a": _Allowed(1)}
    with pytest.raises(StateError, match=r"is intact .* holds \S*_Allowed.*add_safe_globals"):
        torchrepro.load_checkpoint(path)


def _nested(depth: int) -> list[Any]:
    outer: list[Any] = []
    inner = outer
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return outer


REFUSED_AT_SAVE: dict[str, tuple[Callable[[], Any], str]] = {
    "numpy array": (lambda: np.zeros(3), r"\['extra'\] \(a numpy.ndarray\).*torch.from_numpy"),
    "numpy scalar": (lambda: np.float64(1.5), r"\['extra'\] \(a numpy.float64\).*value.item\(\)"),
    "np.random.get_state()": (
        np.random.get_state,
        r"\['extra'\]\[1\] \(a numpy.ndarray\).*in torchrepro.state_dict\(\) already",
    ),
    "Digest": (
        lambda: torchrepro.fingerprint(torch.ones(2)),
        r"\['extra'\] \(a torchrepro.digests.Digest\).*Save str\(digest\)",
    ),
    "RNGState": (
        torchrepro.capture_rng,
        r"\['extra'\] \(a torchrepro.state.rng.RNGState\).*Save state.state_dict\(\)",
    ),
    "lambda": (lambda: lambda: 0, r"torch.save failed .*at checkpoint\['extra'\] \(a function\)"),
    "5000 nested lists": (lambda: _nested(5000), r"torch.save failed \(RecursionError"),
    "an int of 5000 bits": (lambda: 1 << 5000, "opcode LONG4, which safe loading does not read"),
}


@pytest.mark.parametrize("kind", sorted(REFUSED_AT_SAVE))
def test_what_safe_loading_refuses_is_refused_at_save_and_nothing_is_written(
    tmp_path: Path, kind: str
) -> None:
    make, message = REFUSED_AT_SAVE[kind]
    path = torchrepro.save_checkpoint(tmp_path / "ckpt.pt", {"step": 1})
    before = path.read_bytes()
    with pytest.raises(StateError, match=f"cannot save the checkpoint.*{message}.*Nothing was"):
        torchrepro.save_checkpoint(path, {"model": {}, "extra": make()})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.pt"]


@pytest.mark.parametrize(
    ("where", "message"),
    [("folder", "it is a directory; expected a file path"), ("missing/ckpt.pt", "does not exist")],
)
def test_saving_to_a_directory_or_into_a_missing_one_is_refused(
    tmp_path: Path, where: str, message: str
) -> None:
    (tmp_path / "folder").mkdir()
    for save in (save_rng, lambda path: torchrepro.save_checkpoint(path, {})):
        with pytest.raises(StateError, match=message):
            save(tmp_path / where)


# ---------------------------------------------------------------- temporary files, modes


def _stale(path: Path, age: float = _files.STALE_TEMP_SECONDS + 60) -> Path:
    if not path.exists() and not path.is_symlink():
        path.write_bytes(b"partial")
    then = time.time() - age
    os.utime(path, (then, then), follow_symlinks=False)
    return path


def test_the_next_save_removes_stale_temporary_files_of_that_path_and_no_others(
    tmp_path: Path,
) -> None:
    stale = [_stale(tmp_path / ".ckpt.pt.abcd2345.tmp"), _stale(tmp_path / ".ckpt.pt.x_y9z8w7.tmp")]
    (tmp_path / ".ckpt.pt.link1234.tmp").symlink_to(tmp_path / "elsewhere")
    kept = [
        _stale(tmp_path / ".ckpt.pt.young123.tmp", age=5),  # a save running right now
        _stale(tmp_path / ".other.pt.abcd2345.tmp"),  # another path's
        _stale(tmp_path / ".ckpt.pt.notours.tmp"),  # not our name pattern
        _stale(tmp_path / "ckpt.pt.abcd2345.tmp"),
        _stale(tmp_path / ".ckpt.pt.link1234.tmp"),  # not a regular file
    ]
    torchrepro.save_checkpoint(tmp_path / "ckpt.pt", {"step": 1})
    assert not any(path.exists() for path in stale)
    assert sorted(os.listdir(tmp_path)) == sorted(["ckpt.pt", *(path.name for path in kept)])


SAVING_FOREVER = """
import sys, torch, torchrepro
checkpoint = {"w": torch.ones(8 << 20)}
torchrepro.save_checkpoint(sys.argv[1], checkpoint)
print("saved", flush=True)
while True:
    torchrepro.save_checkpoint(sys.argv[1], checkpoint)
"""


def test_a_save_killed_midway_leaves_a_loadable_file_and_the_next_save_cleans_up(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ckpt.pt"
    for _ in range(5):  # until a kill lands while a temporary file exists
        with subprocess.Popen(
            [PYTHON, "-c", SAVING_FOREVER, str(path)], env=child_env(), stdout=subprocess.PIPE
        ) as child:
            assert child.stdout is not None and child.stdout.readline() == b"saved\n"
            while not any(name.endswith(".tmp") for name in os.listdir(tmp_path)):
                time.sleep(0.005)
            child.send_signal(signal.SIGKILL)
        strays = [tmp_path / name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
        if strays:
            break
    assert strays, "no kill landed while a save was running"
    assert _same(torchrepro.load_checkpoint(path), {"w": torch.ones(8 << 20)})
    for stray in strays:
        _stale(stray)
    torchrepro.save_checkpoint(path, {"step": 2})
    assert os.listdir(tmp_path) == ["ckpt.pt"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o600])
def test_an_overwrite_keeps_the_mode_of_the_file_it_replaces(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "ckpt.pt"
    for save in (save_rng, lambda path: torchrepro.save_checkpoint(path, {})):
        save(path)
        path.chmod(mode)
        save(path)
        assert stat.S_IMODE(path.stat().st_mode) == mode


def test_a_new_file_gets_the_umask_mode_as_with_torch_save(tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        ours = torchrepro.save_checkpoint(tmp_path / "ours.pt", {})
        torch.save({}, tmp_path / "torch.pt")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(ours.stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "torch.pt").stat().st_mode) == 0o640
