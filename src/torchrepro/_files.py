"""Files written so that a crash leaves the old file or the new one, never a mix, and files
opened for reading only when they are regular files.

Examples:
    >>> with atomic_binary_writer("state.bin") as file:
    ...     _ = file.write(b"...")
    >>> with open_regular("state.bin") as file:
    ...     file.read()
    b'...'
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, TextIO, cast

PathLike = str | os.PathLike[str]

STALE_TEMP_SECONDS = 600
"""A temporary file of ours unchanged for this long belongs to no running save: a save
writes its temporary file from start to rename without a pause this long."""

_TEMP_SUFFIX = ".tmp"
# Eight characters from this set: ours, and tempfile.mkstemp's (torchrepro 0.1.0 used it).
_TEMP_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


class NotRegularFileError(OSError):
    """A path that names a directory, FIFO, device or socket where a regular file is read."""


@contextlib.contextmanager
def atomic_binary_writer(path: PathLike) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` atomically and durably when the block ends.

    What is written goes to a temporary file in the same directory (a rename is atomic only
    within one file system), opened for reading too, so the writer can check what it wrote.
    When the with-block ends without an exception, the file is flushed and fsynced, renamed
    over ``path``, and the directory is fsynced so the rename itself survives a power loss.
    A crash at any point leaves the previous file intact, plus at most a stray
    ``.<name>.<random>.tmp`` file, which the next save of ``path`` removes once it is
    :data:`STALE_TEMP_SECONDS` old.

    The new file keeps the permissions of the file it replaces; a new file gets those of
    ``open(path, "w")`` (0o666 less the umask), as with ``torch.save``.

    Examples:
        >>> with atomic_binary_writer("state.bin") as file:
        ...     _ = file.write(b"...")
        ...     Path("state.bin").exists()
        False
        >>> Path("state.bin").read_bytes()
        b'...'
    """
    with _replacing(Path(path), "w+b") as file:
        yield cast(BinaryIO, file)


@contextlib.contextmanager
def atomic_text_writer(path: PathLike) -> Iterator[TextIO]:
    """A UTF-8 text file that replaces ``path`` atomically and durably when the block ends.

    As :func:`atomic_binary_writer`: a reader never sees a partial file and a failed write
    leaves the previous file (or none) in place.

    Examples:
        >>> with atomic_text_writer("trace.jsonl") as file:
        ...     _ = file.write("line 1\\n")
        ...     Path("trace.jsonl").exists()
        False
        >>> Path("trace.jsonl").read_text()
        'line 1\\n'
    """
    with _replacing(Path(path), "w") as file:
        yield cast(TextIO, file)


def open_regular(path: PathLike) -> BinaryIO:
    """Opens ``path`` for binary reading if it is a regular file (a symlink to one is too).

    The check is made on the opened file, so the path cannot be swapped in between, and the
    open itself never blocks: a FIFO with no writer is refused at once, not waited on.

    Raises:
        NotRegularFileError: ``path`` is a directory, FIFO, device or socket.
        OSError: ``path`` cannot be opened (missing, no permission).

    Examples:
        >>> try:
        ...     open_regular("/dev/zero")
        ... except NotRegularFileError as error:
        ...     print(error.strerror)
        a character device (like /dev/zero), not a regular file
    """
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
            raise NotRegularFileError(errno.EINVAL, f"{kind}, not a regular file", os.fspath(path))
        if hasattr(os, "set_blocking"):
            os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device (like /dev/zero)",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


@contextlib.contextmanager
def _replacing(target: Path, mode: str) -> Iterator[IO[Any]]:
    handle, temp_name = _create_temp(target)
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
    _remove_stale_temps(target)


def _create_temp(target: Path) -> tuple[int, Path]:
    """A new file beside ``target``, with the mode ``target`` has (or the umask's)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        # os.urandom, not the random module: saving must not move the user's streams.
        random_part = base64.b32encode(os.urandom(5)).decode("ascii").lower()
        name = target.parent / f".{target.name}.{random_part}{_TEMP_SUFFIX}"
        try:
            descriptor = os.open(name, flags, 0o666)  # the kernel applies the umask
        except FileExistsError:
            continue
        try:
            os.chmod(name, stat.S_IMODE(os.stat(target).st_mode))
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(descriptor)
            os.unlink(name)
            raise
        return descriptor, name
    raise FileExistsError(errno.EEXIST, "no free temporary file name", os.fspath(target))


def _remove_stale_temps(target: Path) -> None:
    """Removes temporary files an interrupted save of ``target`` left: ours, by name and age."""
    prefix = f".{target.name}."
    now = time.time()
    # Best effort: a file another save removed first, or one we may not remove, stays.
    with contextlib.suppress(OSError), os.scandir(target.parent) as entries:
        for entry in entries:
            middle = entry.name[len(prefix) : -len(_TEMP_SUFFIX)]
            if not (
                entry.name.startswith(prefix)
                and entry.name.endswith(_TEMP_SUFFIX)
                and len(middle) == 8
                and set(middle) <= _TEMP_CHARACTERS
            ):
                continue
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                mine = not hasattr(os, "geteuid") or info.st_uid == os.geteuid()
                if stat.S_ISREG(info.st_mode) and mine and now - info.st_mtime > STALE_TEMP_SECONDS:
                    os.unlink(entry.path)


def _fsync_directory(directory: Path) -> None:
    # Windows cannot open a directory for fsync; there the rename is already durable enough.
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
