"""The files that hold checkpoints and RNG states: torch zip archives, checked before their
payload is read, and sealed with an integrity record covering every byte torch reads.

Writing: ``torch.save`` streams into the temporary file (no copy of the checkpoint in
memory); the file is refused, before it replaces anything, if it names a class or function
that ``torch.load(weights_only=True)`` does not allow (torch's own list, asked through
``get_unsafe_globals_in_checkpoint``); then one more record, ``torchrepro.integrity``, is
appended: the size and xxh3-128 digest of every other record (the pickled structure, each
tensor storage, torch's metadata). Plain ``torch.load`` ignores it.

Reading refuses at once what is not a regular file or not a zip archive; then, from the
zip directory alone, records compressed or past the end and local headers that disagree
with it; then, in a sealed file, every record whose bytes do not match their digest, by
name, before anything is unpickled. A file without the record (``torch.save``'s, or
torchrepro 0.1.0's) is read as ``torch.load(weights_only=True)`` reads it. Memory: what
``torch.load`` itself takes, or with ``mmap`` what its memory map takes; digests are
streamed 1 MiB at a time.

Examples:
    >>> write_archive("x.pt", {"w": torch.ones(2)}, _zip.CHECKPOINT)
    PosixPath('x.pt')
    >>> read_archive("x.pt", _zip.CHECKPOINT)
    ({'w': tensor([1., 1.])}, True)
"""

from __future__ import annotations

import json
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import xxhash

from torchrepro._files import PathLike, atomic_binary_writer
from torchrepro.digests import XXH3
from torchrepro.errors import StateError
from torchrepro.state import _zip
from torchrepro.state._zip import FileKind

INTEGRITY_RECORD = "torchrepro.integrity"
INTEGRITY_VERSION = 1
_MAX_INTEGRITY_BYTES = 64 << 20
# What torch.save writes; anything else in a file without an integrity record is damage.
_TORCH_RECORDS = re.compile(
    r"data\.pkl|byteorder|version|\.format_version|\.storage_alignment|\.data/.+|data/\d+"
)


# ---------------------------------------------------------------- writing


def write_archive(path: PathLike, value: object, kind: FileKind) -> Path:
    """Saves ``value`` atomically as a sealed torch zip archive that ``read_archive`` reads."""
    target = _target(path, kind)
    with atomic_binary_writer(target) as file:
        try:
            torch.save(value, file)
        except OSError:
            raise
        except Exception as error:  # pickling fails in many ways: a lambda, a lock, depth
            raise StateError(
                f"cannot save the {kind.noun} to {target}: torch.save failed "
                f"({type(error).__name__}: {_first_line(error)}){_located(value, kind)}. Keep "
                "to tensors, numbers, strings, lists, tuples and dicts. Nothing was written."
            ) from None
        file.seek(0)
        try:
            unsafe = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(file))
        except pickle.UnpicklingError as error:  # an opcode safe loading does not read
            raise StateError(
                f"cannot save the {kind.noun} to {target}: torch.load(weights_only=True) "
                f"could not read it back ({_opcode(error)}). Nothing was written."
            ) from None
        if unsafe:
            raise _unsafe(value, unsafe, target, kind)
        _seal(file, target, kind)
    return target


def _target(path: PathLike, kind: FileKind) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise StateError(
            f"expected a file path (str or os.PathLike) to save the {kind.noun} to; got "
            f"{type(path).__name__}. Pass e.g. 'ckpt.pt'."
        )
    target = Path(path)
    if target.is_dir():
        raise StateError(
            f"cannot save the {kind.noun} to {target}: it is a directory; expected a file "
            f"path. Pass a file name inside it, e.g. {str(target / 'ckpt.pt')!r}."
        )
    if not target.parent.is_dir():
        raise StateError(
            f"cannot save the {kind.noun} to {target}: its directory {target.parent} does not "
            "exist. Create it first (Path(...).mkdir(parents=True, exist_ok=True))."
        )
    return target


def _seal(file: IO[bytes], target: Path, kind: FileKind) -> None:
    file.flush()
    folder, records = _zip.records(file, target, kind)
    body = json.dumps(
        {
            "format": INTEGRITY_RECORD,
            "version": INTEGRITY_VERSION,
            "algorithm": XXH3,
            "torch": torch.__version__,
            "records": {name: [r.size, _zip.digest(file, r)] for name, r in records.items()},
        },
        separators=(",", ":"),
    ).encode()
    with zipfile.ZipFile(file, "a") as archive:
        archive.writestr(
            zipfile.ZipInfo(f"{folder}/{INTEGRITY_RECORD}"),
            xxhash.xxh3_128(body).hexdigest().encode() + b"\n" + body,
        )


_FIXES = {
    "numpy.ndarray": "convert it with torch.from_numpy(value) (or value.tolist())",
    "torchrepro.state.rng.RNGState": "save state.state_dict() and read it back with "
    "RNGState.from_state_dict",
    "torchrepro.digests.Digest": "save str(digest) (and digest.algorithm if you need it)",
}


def _unsafe(value: object, unsafe: list[str], target: Path, kind: FileKind) -> StateError:
    found = _first_foreign(value, kind)
    if found is None:
        what, fix = f"the {kind.noun}", "Keep to tensors, numbers, strings, lists and dicts."
    else:
        where, item, parent = found
        name = f"{type(item).__module__}.{type(item).__qualname__}"
        if (
            isinstance(item, np.ndarray)
            and isinstance(parent, tuple)
            and parent[:1] == ("MT19937",)
        ):
            fix = "np.random.get_state() is in torchrepro.state_dict() already; save that"
        elif isinstance(item, np.generic):
            fix = "convert it with value.item()"
        else:
            fix = _FIXES.get(name, "turn it into tensors, numbers, strings, lists or dicts")
        what, fix = f"{where} (a {name})", f"{fix[0].upper()}{fix[1:]}."
    return StateError(
        f"cannot save the {kind.noun} to {target}: {what} needs {', '.join(unsafe)}, which "
        "torch.load(weights_only=True) refuses, so the file could not be read back. "
        f"{fix} Nothing was written."
    )


_PLAIN_TYPES = (str, bytes, int, float, complex, bool, type(None))
_TORCH_PLAIN = (torch.Tensor, torch.Size, torch.dtype, torch.device)
_CONTAINERS = (dict, OrderedDict, list, tuple, set)


def _walk(value: object, root: str) -> Iterator[tuple[str, Any, Any]]:
    """(where, item, parent) for everything in ``value``, depth first, each object once."""
    stack: list[tuple[str, Any, Any]] = [(root, value, None)]
    seen: set[int] = set()
    while stack:
        where, item, parent = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield where, item, parent
        if isinstance(item, Mapping) and type(item) in _CONTAINERS:
            children = [(f"{where}[{_key(key)}]", child) for key, child in item.items()]
        elif type(item) in _CONTAINERS:
            children = [(f"{where}[{n}]", child) for n, child in enumerate(item)]
        else:
            continue
        stack.extend((at, child, item) for at, child in reversed(children))


def _key(key: object) -> str:
    if type(key) in (str, int, float, bool) and len(text := repr(key)) <= 80:
        return text
    return f"<a {type(key).__name__}>"  # a huge int has no repr; a long key is no help


def _first_foreign(value: object, kind: FileKind) -> tuple[str, Any, Any] | None:
    for where, item, parent in _walk(value, kind.root):
        if not (type(item) in _PLAIN_TYPES + _CONTAINERS or isinstance(item, _TORCH_PLAIN)):
            return where, item, parent
    return None


def _located(value: object, kind: FileKind) -> str:
    found = _first_foreign(value, kind)
    return "" if found is None else f" at {found[0]} (a {type(found[1]).__name__})"


# ---------------------------------------------------------------- reading


def read_archive(path: PathLike, kind: FileKind, *, mmap: bool = False) -> tuple[Any, bool]:
    """Loads a file ``write_archive`` (or ``torch.save``) wrote; returns (value, sealed)."""
    with _zip.open_archive(path, kind) as file:
        manifest = check_archive(file, path, kind)
        return _load(file, path, kind, mmap, manifest), manifest is not None


def check_archive(file: IO[bytes], path: PathLike, kind: FileKind) -> dict[str, Any] | None:
    """Checks the container and, in a sealed file, every record against its digest; returns
    the integrity record, or None for a file without one. Unpickles nothing."""
    records = _zip.records(file, path, kind)[1]
    own = records.pop(INTEGRITY_RECORD, None)
    if own is None:
        foreign = sorted(name for name in records if not _TORCH_RECORDS.fullmatch(name))
        if foreign:
            raise _zip.damaged(
                path, kind, f"it holds records {foreign} that torch.save never writes"
            )
        return None
    manifest = _manifest(file, own, path, kind)
    _verify(file, records, manifest["records"], path, kind)
    return manifest


def _manifest(file: IO[bytes], own: _zip.Record, path: PathLike, kind: FileKind) -> dict[str, Any]:
    """The integrity record, itself checked by the digest on its first line."""
    if own.size > _MAX_INTEGRITY_BYTES:
        raise _zip.damaged(path, kind, f"its integrity record claims {own.size} bytes")
    file.seek(own.offset)
    head, _, body = file.read(own.size).partition(b"\n")
    if head != xxhash.xxh3_128(body).hexdigest().encode():
        raise _zip.damaged(path, kind, f"its integrity record ({INTEGRITY_RECORD}) is damaged")
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        parsed = None
    manifest: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
    version = manifest.get("version")
    if type(version) is int and version != INTEGRITY_VERSION:
        raise StateError(
            f"{path} has integrity record version {version}; this torchrepro reads "
            f"{INTEGRITY_VERSION}. Load it with the torchrepro version that wrote it (upgrade "
            "torchrepro if it is newer)."
        )
    records = manifest.get("records")
    if not (
        version == INTEGRITY_VERSION
        and manifest.get("format") == INTEGRITY_RECORD
        and manifest.get("algorithm") == XXH3
        and isinstance(records, dict)
        and all(
            isinstance(entry, list)
            and len(entry) == 2
            and type(entry[0]) is int
            and isinstance(entry[1], str)
            for entry in records.values()
        )
    ):
        raise StateError(
            f"{path}: its {INTEGRITY_RECORD} record is not one torchrepro writes. Expected a "
            f"file written by {kind.writer}; save the {kind.noun} again with it."
        )
    manifest["records"] = {name: (size, digest) for name, (size, digest) in records.items()}
    return manifest


def _verify(
    file: IO[bytes],
    records: dict[str, _zip.Record],
    expected: Mapping[str, tuple[int, str]],
    path: PathLike,
    kind: FileKind,
) -> None:
    if records.keys() != expected.keys():
        missing, extra = sorted(expected.keys() - records), sorted(records.keys() - expected)
        raise _zip.damaged(path, kind, f"its zip directory lacks {missing} and lists {extra}")
    # The structure first: when it is intact, a damaged storage can be named by its tensors.
    order = sorted(records.values(), key=lambda r: (r.name != "data.pkl", r.offset))
    bad = [r for r in order if (r.size, _zip.digest(file, r)) != tuple(expected[r.name])]
    if bad:
        intact = "data.pkl" not in {r.name for r in bad}
        parts = [_part(r, _tensors_at(file, r, kind) if intact else [], kind) for r in bad]
        raise _zip.damaged(
            path,
            kind,
            f"{'; '.join(parts)} {'does' if len(bad) == 1 else 'do'} not match the "
            "digests its integrity record holds",
        )


def _part(record: _zip.Record, tensors: list[str], kind: FileKind) -> str:
    if record.name == "data.pkl":
        return f"the {kind.noun}'s structure (data.pkl: its keys, numbers, strings, shapes)"
    if record.name.startswith("data/"):
        holding = f", the data of {', '.join(tensors)}" if tensors else ""
        return f"tensor storage {record.name} ({record.size} bytes{holding})"
    return f"torch's metadata record {record.name!r}"


def _tensors_at(file: IO[bytes], record: _zip.Record, kind: FileKind) -> list[str]:
    """The tensors whose bytes lie in ``record``, found by loading the (intact) structure onto
    the meta device, where torch notes each storage's offset in the file; [] if it cannot."""
    try:
        file.seek(0)
        structure = torch.load(file, map_location="meta", weights_only=True)
        return [
            where
            for where, item, _ in _walk(structure, kind.root)
            if isinstance(item, torch.Tensor)
            and getattr(item.untyped_storage(), "_checkpoint_offset", None) == record.offset
        ][:3]
    except Exception:  # only the message loses detail
        return []


def _load(
    file: IO[bytes], path: PathLike, kind: FileKind, mmap: bool, manifest: Mapping[str, Any] | None
) -> Any:
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of foreign files; the error says more.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            if mmap:
                return torch.load(os.fspath(path), map_location="cpu", weights_only=True, mmap=True)
            file.seek(0)
            return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        refused = isinstance(error, pickle.UnpicklingError)
        if refused and manifest is not None:
            raise StateError(
                f"{path} is intact (it matches its integrity record) but holds {_why(error)}, "
                "which safe loading refuses in this process: it was saved while "
                "torch.serialization.add_safe_globals allowed it. Allow the same before loading."
            ) from None
        if manifest is not None and manifest.get("torch") != torch.__version__:
            raise StateError(
                f"{path} matches its integrity record, but torch {torch.__version__} cannot "
                f"load it ({_why(error)}). It was written with torch {manifest.get('torch')}: "
                "load it with that version."
            ) from None
        if manifest is not None:  # every record is intact: what is left is the directory
            raise _zip.damaged(
                path, kind, f"torch cannot read its zip directory ({_why(error)})"
            ) from None
        if refused:
            raise StateError(
                f"{path} holds objects that safe loading refuses ({_why(error)}); they were not "
                "loaded, as a pickle can run code. The file has no torchrepro integrity record "
                f"(it was not written by {kind.writer}), so whether it is damaged or made to "
                f"run code cannot be told. Expected a file written by {kind.writer}."
            ) from None
        raise _zip.damaged(path, kind, f"torch cannot load it ({_why(error)})") from None


def _opcode(error: BaseException) -> str:
    found = re.search(r"Unsupported operand (\d+)", str(error))
    names = {op.code: op.name for op in pickletools.opcodes}
    if found is None or chr(int(found[1])) not in names:
        return _why(error)
    name = names[chr(int(found[1]))]
    hint = ": an int of more than 2040 bits; store it as a str" if name == "LONG4" else ""
    return f"its pickle needs opcode {name}, which safe loading does not read{hint}"


def _why(error: BaseException) -> str:
    text = str(error)
    found = re.search(r"GLOBAL (\S+) was not an allowed global", text)
    if found:
        return found[1]
    found = re.search(r"Unsupported [^\n]*", text)
    return found[0] if found else f"{type(error).__name__}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    lines = [line for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if line]
    return lines[0].split(". ")[0][:300] if lines else ""
