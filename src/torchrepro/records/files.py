"""Which file each training process of a run writes, and who that process is.

Every Python process of a ``torchrepro check`` run inherits the run's record path; each that
trains claims a file of its own (:func:`claim_record`): ``run.jsonl`` for the first, then
``run.p1.jsonl``, ``run.p2.jsonl``..., with ``.rank{r}`` inserted under torchrun. Its
header names the process (:func:`this_process`), so runs are paired process by process.
Nothing here imports torch.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import time
from pathlib import Path
from typing import IO, Any

from torchrepro.errors import RecordError

__all__ = [
    "claim_record",
    "incomplete_path",
    "open_own_record",
    "read_incomplete",
    "process_argv",
    "process_files",
    "process_path",
    "rank_files",
    "rank_path",
    "this_process",
]

ARGV, PID, STARTED = "argv", "pid", "started"
"""Header keys of the process that wrote a record (see :func:`this_process`)."""

# When this process first loaded the record files module: under the `torchrepro run` bootstrap,
# at start-up, before the user's script runs.
_LOADED = time.time()


def _start_time() -> float:
    """When this process started running this Python, in seconds since the epoch.

    The later of its fork (Linux: from /proc) and its first import of this module: a shell
    runs the last command of ``bash -c "a && b"`` by exec in its own process, which the
    kernel dates from the shell's start, before ``a``; a forked process that trains
    inherits the module from its parent but has a fork time of its own.
    """
    try:
        # Field 22 of /proc/self/stat, in clock ticks after boot; the command name (field
        # 2, in parentheses) may hold spaces, so count from its closing parenthesis.
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                forked = int(line.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
                return max(forked, _LOADED)
    except (OSError, ValueError, IndexError):
        pass
    return _LOADED


def this_process() -> dict[str, Any]:
    """This process's command line, pid and start time, as its record's header holds them.

    ``torchrepro check`` pairs the training processes of its runs by command line and by
    order of start.

    Examples:
        >>> sorted(this_process()), this_process()["pid"] == os.getpid()
        (['argv', 'pid', 'started'], True)
    """
    return {ARGV: process_argv(), PID: os.getpid(), STARTED: _start_time()}


def process_argv() -> list[str]:
    """This process's command line, its interpreter and options included.

    Examples:
        >>> process_argv()[0] == sys.orig_argv[0]
        True
    """
    # orig_argv keeps the interpreter and its options (`python -m pkg`, `-c CODE`).
    return list(getattr(sys, "orig_argv", None) or sys.argv)


def rank_path(path: str | os.PathLike[str], world_size: int, rank: int) -> Path:
    """The file a rank writes: ``path`` itself for one process, else ``stem.rank{r}.suffix``.

    Examples:
        >>> str(rank_path("runs/a.jsonl", 4, 2))
        'runs/a.rank2.jsonl'
    """
    p = Path(path)
    if world_size <= 1:
        return p
    return p.with_name(f"{p.stem}.rank{rank}{p.suffix}")


def process_path(path: str | os.PathLike[str], order: int) -> Path:
    """The record of the training process ``order`` of a run: ``path``, then ``stem.p{n}``.

    Order 0 is the first process of the run to claim a record (:func:`claim_record`).

    Examples:
        >>> str(process_path("runs/a.jsonl", 0)), str(process_path("runs/a.jsonl", 2))
        ('runs/a.jsonl', 'runs/a.p2.jsonl')
    """
    p = Path(path)
    return p if order == 0 else p.with_name(f"{p.stem}.p{order}{p.suffix}")


def claim_record(path: str | os.PathLike[str], world_size: int, rank: int) -> tuple[Path, IO[str]]:
    """Creates and opens the record file of this process among those of the run at ``path``.

    Every Python process of a run inherits the run's path; each that trains takes the
    first free process slot (:func:`process_path`, with the rank inserted under torchrun),
    created with ``O_CREAT | O_EXCL``: two processes starting together never get the same
    file, and no process overwrites another's record.

    Returns:
        The file's path and the file, open for writing text.

    Examples:
        >>> for world_size, rank in ((1, 0), (1, 0), (2, 1)):
        ...     path, file = claim_record("run.jsonl", world_size, rank)
        ...     file.close(); print(path)
        run.jsonl
        run.p1.jsonl
        run.rank1.jsonl
    """
    for order in itertools.count():
        candidate = rank_path(process_path(path, order), world_size, rank)
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        return candidate, open(fd, "w", encoding="utf-8")  # noqa: SIM115
    raise AssertionError("unreachable")  # itertools.count() never ends


def open_own_record(path: Path) -> IO[str]:
    """Opens a record path this process chose, for writing, unless another process writes it.

    The file is locked (``flock``) while it is open, and emptied only once locked: a second
    process given the same path gets a :class:`RecordError` and leaves the first one's
    record whole.

    Raises:
        RecordError: Another process holds the record open for writing.
        OSError: The file cannot be created or opened.

    Examples:
        >>> first = open_own_record(Path("run.jsonl"))
        >>> open_own_record(Path("run.jsonl"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        torchrepro.errors.RecordError: another process is writing the record 'run.jsonl'; ...
        >>> first.close()
    """
    import fcntl

    file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - "a": nothing truncated yet
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        raise RecordError(
            f"another process is writing the record {str(path)!r}; expected a path of this "
            "process's own. Give each process its own path (e.g. with its rank or pid in "
            "it), or run them under torchrepro check, which does."
        ) from None
    os.ftruncate(file.fileno(), 0)
    return file


def incomplete_path(path: str | os.PathLike[str]) -> Path:
    """Where a recorder that had to stop says why: ``run.jsonl.incomplete`` beside the record.

    A file of its own, not a line in the record: when the disk is full or the file too
    large, no more of the record can be written, but an empty file can usually be made.

    Examples:
        >>> str(incomplete_path("runs/a.jsonl"))
        'runs/a.jsonl.incomplete'
    """
    p = Path(path)
    return p.with_name(p.name + ".incomplete")


def read_incomplete(path: str | os.PathLike[str]) -> str | None:
    """Why the record at ``path`` stopped early, if its recorder had to stop; else None.

    Examples:
        >>> read_incomplete("run.jsonl") is None
        True
    """
    try:
        with open(incomplete_path(path), "rb") as file:
            reason = file.read(4096).decode("utf-8", "replace").strip()
    except FileNotFoundError:
        return None
    except OSError as error:
        reason = f"(the reason cannot be read: {error.strerror})"
    return reason or "the recorder stopped (no reason could be written)"


def process_files(path: str | os.PathLike[str]) -> list[tuple[int, bool]]:
    """The training processes that have a record at the run path ``path`` now.

    Each is ``(order, ranked)``: its record is ``process_path(path, order)``, as one file,
    or as one file per rank when ``ranked``. A process of one rank and a torchrun training
    may share an order: their names differ.

    Examples:
        >>> for order, ranks in ((0, 1), (1, 1), (0, 2)):
        ...     for rank in range(ranks):
        ...         _ = rank_path(process_path("run.jsonl", order), ranks, rank).write_text("")
        >>> _ = Path("run.p01.jsonl").write_text("")  # not a name claim_record gives
        >>> process_files("run.jsonl")
        [(0, False), (0, True), (1, False)]
    """
    p = Path(path)
    name = re.compile(rf"{re.escape(p.stem)}(?:\.p(\d+))?(?:\.rank(\d+))?{re.escape(p.suffix)}")
    found = set()
    for candidate in p.parent.glob(f"{p.stem}*{p.suffix}"):
        match = name.fullmatch(candidate.name)
        if match is None:
            continue
        order, rank = int(match[1] or 0), match[2]
        ranked = rank is not None
        # Only the names claim_record gives: no "p0", no leading zeros.
        if rank_path(process_path(p, order), 2 if ranked else 1, int(rank or 0)) == candidate:
            found.add((order, ranked))
    return sorted(found)


def rank_files(path: str | os.PathLike[str]) -> dict[int, Path]:
    """The per-rank files of a record asked for at ``path`` that exist now, by rank.

    Examples:
        >>> for rank in (1, 0):
        ...     _ = rank_path("run.jsonl", 2, rank).write_text("")
        >>> rank_files("run.jsonl")
        {0: PosixPath('run.rank0.jsonl'), 1: PosixPath('run.rank1.jsonl')}
    """
    p = Path(path)
    prefix, suffix = f"{p.stem}.rank", p.suffix
    found = {}
    for candidate in p.parent.glob(f"{prefix}*{suffix}"):
        number = candidate.name[len(prefix) : len(candidate.name) - len(suffix)]
        if number.isdigit() and rank_path(p, 2, int(number)) == candidate:
            found[int(number)] = candidate
    return dict(sorted(found.items()))
