"""Torch's zip archives, read from their directory alone: which records a file holds, where
each one's bytes lie, and a record's digest streamed 1 MiB at a time; every way a file can
fail to be one is a StateError that says what was found.

``torch.save`` writes a zip of stored (uncompressed) records in one folder: ``data.pkl``
(the pickled structure), ``data/<n>`` (each tensor storage's bytes) and a few metadata
records, then the zip directory, on one disk, with no comment. Anything else is refused
before a record is read: not a regular file, no zip signature, a directory end that does
not fit the file, records compressed, encrypted or past its end, local headers that
disagree with the directory.

Examples:
    >>> _ = torch.save({"w": torch.ones(2)}, "w.pt")
    >>> with open_archive("w.pt", CHECKPOINT) as file:
    ...     sorted(records(file, "w.pt", CHECKPOINT)[1])[:2]
    ['.data/serialization_id', '.format_version']
"""

from __future__ import annotations

import os
import struct
import zipfile
from dataclasses import dataclass
from typing import IO

import xxhash

from torchrepro._files import PathLike, open_regular
from torchrepro.errors import StateError


@dataclass(frozen=True)
class FileKind:
    """What a file holds, for messages: its noun, its writer, the name of its root value."""

    noun: str
    writer: str
    root: str


CHECKPOINT = FileKind("checkpoint", "torchrepro.save_checkpoint", "checkpoint")
RNG_STATE = FileKind("RNG state", "torchrepro.state.save_rng", "state")

_ZIP_MAGIC = b"PK\x03\x04"
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, fixed fields, name and extra lengths
# The zip directory's end record (disks, entries, directory size and offset, comment) and,
# for archives over 4 GiB or 65,535 records, zip64's locator and end record.
_END = struct.Struct("<4s4H2LH")
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Record:
    name: str  # inside the archive's folder
    offset: int  # of its first byte of data
    size: int


def open_archive(path: PathLike, kind: FileKind) -> IO[bytes]:
    """``path`` opened for reading if it is a regular file; a StateError saying what it is else."""
    if not isinstance(path, str | os.PathLike):
        raise StateError(
            f"expected a file path (str or os.PathLike) to load the {kind.noun} from; got "
            f"{type(path).__name__}. Pass e.g. 'ckpt.pt'."
        )
    try:
        return open_regular(path)
    except OSError as error:
        reason = error.strerror or str(error)
        raise StateError(
            f"cannot read the {kind.noun} {os.fspath(path)!r}: {reason[0].lower()}"
            f"{reason[1:]}; expected a regular file written by {kind.writer}. Pass the path "
            "of that file."
        ) from None


def records(file: IO[bytes], path: PathLike, kind: FileKind) -> tuple[str, dict[str, Record]]:
    """The archive's folder and records, from its directory and local headers; no payload."""
    size = os.fstat(file.fileno()).st_size
    file.seek(0)
    head = file.read(16)
    if not head.startswith(_ZIP_MAGIC):
        raise _not_an_archive(path, kind, head, size)
    entries = _directory_end(file, size, path, kind)
    try:
        with zipfile.ZipFile(file) as archive:
            infos = archive.infolist()
    except Exception as error:  # a damaged directory fails in many ways; all are damage
        raise damaged(path, kind, f"its zip directory cannot be read ({error})") from None
    if len(infos) != entries:
        raise damaged(path, kind, f"its zip directory lists {len(infos)} of {entries} records")
    folders = {info.filename.partition("/")[0] for info in infos}
    if len(folders) != 1:
        raise damaged(path, kind, f"its records lie in {len(folders)} folders, not one")
    found: dict[str, Record] = {}
    for info in infos:
        name = info.filename.partition("/")[2]
        if name in found or not name:
            raise damaged(path, kind, f"record {info.filename!r} is nameless or appears twice")
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1 or info.volume:
            raise damaged(path, kind, f"record {name!r} is compressed, encrypted or elsewhere")
        file.seek(info.header_offset)
        local = file.read(_LOCAL_HEADER.size)
        if len(local) < _LOCAL_HEADER.size or local[:4] != _ZIP_MAGIC:
            raise damaged(path, kind, f"record {name!r} has no local header where listed")
        name_length, extra_length = _LOCAL_HEADER.unpack(local)[1:]
        encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
        if file.read(name_length).decode(encoding, "replace") != info.orig_filename:
            raise damaged(path, kind, f"record {name!r} has another name in its local header")
        offset = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
        if info.file_size != info.compress_size or offset + info.file_size > size:
            raise damaged(path, kind, f"record {name!r} runs past the end of the file")
        found[name] = Record(name, offset, info.file_size)
    if "data.pkl" not in found:
        raise damaged(path, kind, "it has no data.pkl record (the pickled structure)")
    return folders.pop(), found


def _directory_end(file: IO[bytes], size: int, path: PathLike, kind: FileKind) -> int:
    """The number of records the end of the zip directory announces, checked against the
    file: torch.save writes one disk, no comment, and a directory that fits in the file."""
    if size < _END.size:
        raise damaged(path, kind, "it is too short to end with a zip directory")
    file.seek(size - _END.size)
    signature, disk, first, here, entries, length, start, comment = _END.unpack(
        file.read(_END.size)
    )
    if signature != b"PK\x05\x06" or comment:
        raise damaged(path, kind, "it does not end with a zip directory")
    if 0xFFFF in (here, entries) or 0xFFFFFFFF in (length, start):
        locator = size - _END.size - _END64_LOCATOR.size
        file.seek(max(locator, 0))
        signature, _, end64, disks = _END64_LOCATOR.unpack(file.read(_END64_LOCATOR.size))
        if signature != b"PK\x06\x07" or disks > 1 or not 0 <= end64 <= locator - _END64.size:
            raise damaged(path, kind, "its zip64 directory locator is damaged")
        file.seek(end64)
        fields = _END64.unpack(file.read(_END64.size))
        signature, (disk, first, here, entries, length, start) = fields[0], fields[4:]
        if signature != b"PK\x06\x06":
            raise damaged(path, kind, "its zip64 directory end is damaged")
    if disk or first or here != entries or start + length > size:
        raise damaged(path, kind, "the end of its zip directory does not fit the file")
    return int(entries)


def digest(file: IO[bytes], record: Record) -> str:
    """The xxh3-128 hex digest of a record's bytes, read 1 MiB at a time."""
    hasher = xxhash.xxh3_128()
    buffer = memoryview(bytearray(min(_CHUNK, record.size)))
    file.seek(record.offset)
    left = record.size
    while left:
        read = file.readinto(buffer[: min(left, len(buffer))])  # type: ignore[attr-defined]
        if not read:
            break  # the file shrank while being read: the digest will not match
        hasher.update(buffer[:read])
        left -= read
    return str(hasher.hexdigest())


def _not_an_archive(path: PathLike, kind: FileKind, head: bytes, size: int) -> StateError:
    if size == 0:
        got = "an empty file"
    elif head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return StateError(
            f"{path} holds a bare pickle (torch.save's legacy format, or pickle.dump), not "
            f"the zip archive {kind.writer} writes. It was not unpickled, as a pickle can run "
            "code. If you trust its source, load it with torch.load(path, weights_only=True) "
            f"and save it again with {kind.writer}."
        )
    else:
        got = f"{size} bytes starting with {head[:8]!r}"
    return StateError(
        f"{path} is not a torchrepro {kind.noun} file: expected a zip archive written by "
        f"{kind.writer} (starting with {_ZIP_MAGIC!r}); got {got}. Pass the path of a file "
        "it wrote (if this is one, it is damaged: restore it from another copy)."
    )


def damaged(path: PathLike, kind: FileKind, what: str) -> StateError:
    """The one error for a damaged file: ``what`` says which part, and nothing was loaded."""
    return StateError(
        f"{path} is damaged: {what}. Nothing was loaded. Restore the {kind.noun} from another "
        f"copy, or save it again with {kind.writer}."
    )
