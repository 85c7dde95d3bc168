"""A pytest plugin (``-p shown_output`` in pyproject.toml): every output README.md and docs/
show is produced again and compared with what the page shows.

Sybil finds the examples in the pages and reports each as a test:

- a ``python`` block that starts with ``>>>`` is a doctest (one test a block), run in this
  process, in a fresh folder; global state is put back after the page;
- a ``console`` block is one command (its first line, after ``$ ``) and its output: the
  command is run with bash, from a fresh folder holding links to the repository's
  ``examples/`` and ``tests/``, with this checkout's torchrepro first on ``PATH``, and what it
  writes to stdout must be the rest of the block.

In both, ``...`` in the shown output stands for what differs between runs or machines (a
time, an unseeded run's accuracy: doctest's ELLIPSIS), and a run of spaces or line breaks
matches any other (NORMALIZE_WHITESPACE); every other character must be as shown. Other
python blocks show no output and are not run here.
"""

from __future__ import annotations

import contextlib
import doctest
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sybil import Document, Example, Region, Sybil
from sybil.parsers.markdown import CodeBlockParser

from doctest_sandbox import global_state_kept

ROOT = Path(__file__).resolve().parents[1]
# As for the docstrings' examples (doctest_optionflags in pyproject.toml): a table with a
# placeholder keeps its columns aligned on the page.
_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
_CHECKER = doctest.OutputChecker()


def _run_doctest(example: Example) -> str | None:
    """A python block of ``>>>`` lines, as one doctest (its lines share their state)."""
    text = str(example.parsed)
    test = doctest.DocTestParser().get_doctest(
        text, example.namespace, example.path, example.path, example.line
    )
    runner = doctest.DocTestRunner(optionflags=_FLAGS)
    report: list[str] = []
    runner.run(test, out=report.append, clear_globs=False)
    example.namespace.update(test.globs)
    return "".join(report) if runner.failures else None


def _doctests(document: Document) -> Iterator[Region]:
    """The page's python blocks that start with ``>>>`` (the others show no output)."""
    for region in CodeBlockParser("python", _run_doctest)(document):
        if str(region.parsed).startswith(">>>"):
            yield region


def session(text: str) -> tuple[str, str]:
    """A console block as (command, shown output): its first line is ``$ `` and the command;
    every other line is output, even one that starts with ``$ `` (the demo prints one).

    Examples:
        >>> session("$ echo hi\\nhi\\n")
        ('echo hi', 'hi\\n')
    """
    first, _, shown = text.partition("\n")
    if not first.startswith("$ "):
        raise ValueError(f"a console block starts with '$ ' and the command; got {first!r}")
    return first.removeprefix("$ "), shown


def _run_session(example: Example) -> str | None:
    folder = Path(example.namespace["tmp_path"])
    for name in ("examples", "tests"):
        if not (folder / name).exists():
            (folder / name).symlink_to(ROOT / name)
    from conftest import child_env  # tests/conftest.py, loaded by the time a test runs

    env = child_env(HF_HUB_OFFLINE="1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    command, shown = session(str(example.parsed))
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if _CHECKER.check_output(shown, done.stdout, _FLAGS):
        return None
    difference = _CHECKER.output_difference(
        doctest.Example(command, shown), done.stdout, _FLAGS | doctest.REPORT_NDIFF
    )
    return f"$ {command}\nexit status {done.returncode}\n{difference}\n{done.stderr[-3000:]}"


def _setup(namespace: dict[str, Any]) -> None:
    """Before a page's doctests: a fresh folder; afterwards, global state as it was."""
    stack = contextlib.ExitStack()
    stack.enter_context(global_state_kept())
    stack.callback(os.chdir, os.getcwd())
    os.chdir(stack.enter_context(tempfile.TemporaryDirectory(prefix="page-")))
    namespace["_put_back"] = stack


def _teardown(namespace: dict[str, Any]) -> None:
    namespace["_put_back"].close()


PARSERS = (_doctests, CodeBlockParser("console", _run_session))
pytest_collect_file = Sybil(
    parsers=PARSERS,
    patterns=["README.md", "docs/*.md"],
    path=str(ROOT),
    fixtures=["tmp_path"],
    setup=_setup,
    teardown=_teardown,
).pytest()
