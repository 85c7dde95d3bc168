"""Stopping what ``torchrepro check`` started: a run's whole process group, on a signal to
check too, and what a failed run last said.

Examples:
    >>> import subprocess
    >>> sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
    ...                            start_new_session=True)
    >>> stop_processes([sleeper]); sleeper.returncode
    -15
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "GRACE_SECONDS",
    "stderr_tail",
    "stop_on_signals",
    "stop_processes",
]

GRACE_SECONDS = 5.0
"""How long a run has to end on SIGTERM before its process group is killed."""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed user: still there
        return True
    return True


def _ended(groups: list[subprocess.Popen[bytes]], grace: float) -> list[subprocess.Popen[bytes]]:
    """Waits up to ``grace`` seconds for the groups to end; returns those still there."""
    deadline = time.monotonic() + grace
    while groups:
        for process in groups:
            process.poll()  # reap the leader, so that a group of one ends
        groups = [p for p in groups if _group_alive(p.pid)]
        if not groups or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return groups


def stop_processes(
    processes: Sequence[subprocess.Popen[bytes]], grace: float | None = None
) -> None:
    """Ends runs and everything they started (DataLoader workers, ranks): their process groups.

    SIGTERM to every group first; what is left after ``grace`` seconds (default
    :data:`GRACE_SECONDS`: a process that ignores SIGTERM, or the children of a command
    that exited on it) gets SIGKILL, and is waited for. Each group is a run's own
    (``start_new_session``): its id is the run's pid, and it lives on while any member
    does, even after the run itself exited.
    """
    grace = GRACE_SECONDS if grace is None else grace
    groups = [p for p in processes if p.poll() is None or _group_alive(p.pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for process in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        groups = _ended(groups, grace)


def stderr_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a run's standard error file ("" if unreadable)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def stop_on_signals() -> Callable[[], None]:
    """Turns SIGTERM and SIGHUP into KeyboardInterrupt; returns what puts them back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # only the main thread may set handlers

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
