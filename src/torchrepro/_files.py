"""Writing files so that a crash leaves either the old file or the new one, never a mix."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

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
    handle, temp_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    _fsync_directory(target.parent)
    return target


def _fsync_directory(directory: Path) -> None:
    # Windows cannot open a directory for fsync; there the rename is already durable enough.
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
