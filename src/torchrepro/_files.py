"""Writing files so that a crash leaves either the old file or the new one, never a mix."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, TextIO, cast

PathLike = str | os.PathLike[str]


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically and durably.

    The bytes go to a temporary file in the same directory (a rename is atomic only
    within one file system), which is flushed and fsynced before it replaces ``path``;
    the directory is then fsynced so the rename itself survives a power loss. A crash at
    any point leaves the previous file intact, plus at most a stray ``.tmp`` file.

    Returns:
        The path written, as a ``Path``.

    Example:
        >>> atomic_write_bytes("state.bin", b"...")
        PosixPath('state.bin')
    """
    target = Path(path)
    with _replacing(target, "wb") as file:
        file.write(data)
    return target


@contextlib.contextmanager
def atomic_text_writer(path: PathLike) -> Iterator[TextIO]:
    """A UTF-8 text file that replaces ``path`` atomically and durably when the block ends.

    What is written streams to a temporary file, as in :func:`atomic_write_bytes`; ``path``
    is replaced only when the with-block ends without an exception, so a reader never sees
    a partial file and a failed write leaves the previous file (or none) in place.

    Example:
        >>> with atomic_text_writer("trace.jsonl") as file:
        ...     _ = file.write("line 1\\n")
        ...     Path("trace.jsonl").exists()
        False
        >>> Path("trace.jsonl").read_text()
        'line 1\\n'
    """
    with _replacing(Path(path), "w") as file:
        yield cast(TextIO, file)


@contextlib.contextmanager
def _replacing(target: Path, mode: str) -> Iterator[IO[Any]]:
    handle, temp_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(handle, mode, encoding=encoding) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    # Windows cannot open a directory for fsync; there the rename is already durable enough.
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
