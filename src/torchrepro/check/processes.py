"""Stopping what ``torchrepro check`` started: a run's whole process group, on a signal to
check too, and what a failed run last said.

Example:
    >>> import subprocess
    >>> sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
    ...                            start_new_session=True)
    >>> stop_process(sleeper); sleeper.returncode
    -15
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["stderr_tail", "stop_on_signals", "stop_process"]


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Ends a run and everything it started (DataLoader workers, ranks): its process group."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


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
