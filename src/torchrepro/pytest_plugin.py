"""The pytest plugin: every test seeded, the seed printed, a failure replayed by copy-paste.

Installed with torchrepro (entry point ``pytest11``), it is active in every pytest run of
the environment. ``-p no:torchrepro``, or ``torchrepro = false`` in the ini file, switches
every part of it off, the pytest-randomly seeder included. What it does when on:

- Resolves one base seed per session: ``--torchrepro-seed=N``, ``--torchrepro-seed=last``
  (the previous run's, from pytest's cache; also the default under ``--lf`` and ``--ff``)
  or a fresh one. The header and the summary print it; pytest-xdist workers get the
  controller's.
- Seeds by scope, each from the base seed and a node id relative to the project (the
  nearest folder up from the test file with ``pyproject.toml``, ``setup.py``, ``setup.cfg``,
  ``tox.ini``, ``pytest.ini`` or ``.git``), so nothing depends on the order of tests, on
  which ran first, on ``-k``, xdist or where pytest was started:
  each module and class is collected (imported, parametrized) under its own seed; each
  fixture wider than a function is set up under its own, and the draws it makes do not
  move the test's streams; each test is seeded once, before its fixtures, with
  ``derive_seed(base, "test", id)``. A fixture that seeds, switches determinism or sets
  environment variables is respected: nothing reseeds after it.
- ``numpy.random.default_rng()`` without a seed, called while collecting or running, gets
  a seed derived from the scope's (with a count of calls), so it repeats too.
- After each test it restores what it changed: the RNG states, torchrepro's own seeding
  and ``TORCHREPRO_SEED``. Determinism flags and other variables stay as the suite left
  them (a module fixture's flags live for the module).
- A failing test's report has its seed, the command that replays it (with the options that
  change collection and warnings) and how to draw the same in a script.
- Beside pytest-randomly, which reseeds Python and numpy before each test phase, the
  ``pytest_randomly.random_seeder`` entry point puts torchrepro's streams back as they were
  before that reseed: torchrepro's seed decides every draw, pytest-randomly's the order.

Examples:
    A test that fails for some seeds prints, in its report::

        --------------------------------- torchrepro ---------------------------------
        test seed: 4014470532347052413
        replay: pytest 'tests/test_model.py::test_dropout' --torchrepro-seed=2718281828
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import secrets
import shlex
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from torchrepro import _contract, seeding
from torchrepro._derive import derive_seed, normalize_seed
from torchrepro._sources import available_sources, capture_all, restore_all, seed_all
from torchrepro.errors import SeedError

OPTION = "--torchrepro-seed"
INI = "torchrepro"
CACHE_KEY = "torchrepro/seed"
_WORKER_KEY = "torchrepro_seed"
_PROJECT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", "tox.ini", "pytest.ini", ".git")
# Options that change what is collected or how warnings are treated: a replay needs them.
_KEPT_OPTIONS = (
    "-p",
    "-W",
    "--pythonwarnings",
    "-c",
    "--config-file",
    "--rootdir",
    "--confcutdir",
    "--import-mode",
    "-o",
    "--override-ini",
    "--noconftest",
    "--pyargs",
    "--strict-markers",
    "--strict-config",
)
_FLAGS_WITHOUT_VALUE = ("--noconftest", "--pyargs", "--strict-markers", "--strict-config")

# The session seeding now, for pytest-randomly's callback, which gets no config. A session
# run inside another (pytester) stacks on it and gives it back at its end.
_active: _Seeding | None = None
_seeding_key = pytest.StashKey["_Seeding"]()
_outer_key = pytest.StashKey["_Seeding | None"]()
_test_seed_key = pytest.StashKey[int]()


def _parse_seed(text: str) -> int | str:
    if text == "last":
        return text
    try:
        return normalize_seed(int(text), OPTION)
    except (ValueError, SeedError) as error:
        raise argparse.ArgumentTypeError(
            f"{OPTION} must be an int in [0, 2**64) or 'last'; got {text!r}. "
            f"Pass e.g. {OPTION}=1234, or {OPTION}=last to reuse the previous run's seed."
        ) from error


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("torchrepro", "torchrepro seeding")
    group.addoption(
        OPTION,
        dest="torchrepro_seed",
        default=None,
        type=_parse_seed,
        metavar="N|last",
        help="Base seed from which every test's seed is derived (int in [0, 2**64)), or "
        "'last' for the previous run's. Default: a fresh seed (the last one under --lf/--ff), "
        "printed in the header.",
    )
    parser.addini(
        INI,
        type="bool",
        default=True,
        help="false switches torchrepro's seeding off, as -p no:torchrepro does",
    )


def _cached_seed(config: pytest.Config) -> int | None:
    cache = getattr(config, "cache", None)
    last = None if cache is None else cache.get(CACHE_KEY, None)
    return last if isinstance(last, int) else None


def _resolve_base_seed(config: pytest.Config) -> tuple[int, str]:
    """The base seed and where it came from."""
    option = config.getoption("torchrepro_seed")
    if isinstance(option, int):
        return option, "given"
    last = _cached_seed(config)
    if option == "last":
        if last is None:
            where = (
                "pytest's cache is off: -p no:cacheprovider"
                if getattr(config, "cache", None) is None
                else "none in .pytest_cache"
            )
            raise pytest.UsageError(
                f"{OPTION}=last: no previous run's seed was found ({where}). Run once "
                f"without it, or pass the seed printed in that run's header ({OPTION}=N)."
            )
        return last, "the last run's"
    rerun = config.getoption("lf", False) or config.getoption("failedfirst", False)
    if rerun and last is not None:
        return last, "the last run's, for --lf/--ff"
    return secrets.randbelow(2**32), "fresh"


@functools.cache
def _project(folder: Path) -> Path:
    """The project folder of a test folder: the nearest one up with a project file, else the
    folder above its topmost package."""
    for candidate in (folder, *folder.parents):
        if any((candidate / marker).exists() for marker in _PROJECT_MARKERS):
            return candidate
    while (folder / "__init__.py").exists() and folder.parent != folder:
        folder = folder.parent
    return folder


_stable_key = pytest.StashKey[str]()


def stable_id(node: pytest.Item | pytest.Collector) -> str:
    """A node's id relative to its project, the same wherever pytest was started.

    Examples:
        >>> stable_id(item).endswith("pytest_plugin.py::torchrepro.pytest_plugin.stable_id")
        True
    """
    if _stable_key not in node.stash:
        node.stash[_stable_key] = _stable_id(node)
    return node.stash[_stable_key]


def _stable_id(node: pytest.Item | pytest.Collector) -> str:
    where = _relative(Path(node.path))
    if where is None:  # not under its own project: a path pytest made up
        return node.nodeid
    _, sep, rest = node.nodeid.partition("::")
    return f"{where}{sep}{rest}"


@functools.cache
def _relative(path: Path) -> str | None:
    """A test file's or folder's path relative to its project."""
    folder = path if path.is_dir() else path.parent
    try:
        return path.relative_to(_project(folder)).as_posix()
    except ValueError:
        return None


class _XdistHooks:
    """Registered only under pytest-xdist, whose hook this is."""

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[_WORKER_KEY] = node.config.stash[_seeding_key].base


def pytest_configure(config: pytest.Config) -> None:
    global _active
    if not config.getini(INI):
        return
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and _WORKER_KEY in workerinput:
        # An xdist worker: the controller resolved the seed and wrote the cache.
        base, origin = int(workerinput[_WORKER_KEY]), "the controller's"
    else:
        base, origin = _resolve_base_seed(config)
        cache = getattr(config, "cache", None)
        if cache is not None:
            cache.set(CACHE_KEY, base)
    config.stash[_outer_key] = _active
    _active = config.stash[_seeding_key] = _Seeding(config, base, origin)
    config.pluginmanager.register(_active, "torchrepro-seeding")
    if _active.randomly:
        config.pluginmanager.register(_RandomlyHooks(_active), "torchrepro-randomly")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(), "torchrepro-xdist")


def pytest_unconfigure(config: pytest.Config) -> None:
    global _active
    if _seeding_key in config.stash:
        config.stash[_seeding_key].close()
        _active = config.stash[_outer_key]


def _randomly_reseeds() -> dict[str, Any]:
    """The states of the streams pytest-randomly reseeds (Python's and numpy's)."""
    return capture_all([s for s in available_sources(host_only=True) if s.name != "torch"])


def _numpy_default_rng() -> Any:
    try:
        import numpy as np
    except ImportError:
        return None
    return np.random.default_rng


class _RandomlyHooks:
    """Registered only beside pytest-randomly: before its reseed of each later phase, what
    torchrepro wants in force is the streams as they are (the fixtures' draws stand)."""

    def __init__(self, seeding: _Seeding) -> None:
        self.seeding = seeding

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> None:
        self.seeding.wanted = _randomly_reseeds()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        self.seeding.wanted = _randomly_reseeds()


class _Seeding:
    """The plugin while it is on: one per session, registered by `pytest_configure`."""

    def __init__(self, config: pytest.Config, base: int, origin: str) -> None:
        self.config, self.base, self.origin = config, base, origin
        self.randomly = config.pluginmanager.hasplugin("randomly")
        # The states torchrepro wants in force in this phase: what pytest-randomly's
        # reseed is undone to (only kept when pytest-randomly is there).
        self.wanted: dict[str, Any] | None = None
        self.scope_seed: int | None = None  # the seed of the scope now running
        self.rng_calls = 0
        self.native_default_rng = _numpy_default_rng()
        if self.native_default_rng is not None:
            import numpy as np

            np.random.default_rng = self._default_rng

    def close(self) -> None:
        if self.native_default_rng is not None:
            import numpy as np

            np.random.default_rng = self.native_default_rng

    def _default_rng(self, seed: Any = None) -> Any:
        assert self.native_default_rng is not None
        if seed is None and self.scope_seed is not None:
            self.rng_calls += 1
            seed = derive_seed(self.scope_seed, "default_rng", self.rng_calls)
        return self.native_default_rng(seed)

    def _enter(self, seed: int) -> int | None:
        """Seeds every stream for a scope; returns the scope it interrupts."""
        outer = self.scope_seed
        self.scope_seed, self.rng_calls = seed, 0
        seed_all(seed)
        if self.randomly:
            self.wanted = _randomly_reseeds()
        return outer

    @contextlib.contextmanager
    def _scope(self, seed: int) -> Generator[None, None, None]:
        """Seeds for a scope inside a block; afterwards the streams are as before it."""
        states = capture_all()
        calls, wanted = self.rng_calls, self.wanted
        outer = self._enter(seed)
        try:
            yield
        finally:
            restore_all(states)
            self.scope_seed, self.rng_calls, self.wanted = outer, calls, wanted

    def pytest_report_header(self, config: pytest.Config) -> str:
        text = f"torchrepro seed: {self.base} ({self.origin}; repeat with {OPTION}={self.base})"
        if self.randomly:
            text += (
                "\n  torchrepro's seed decides every draw in the tests; pytest-randomly's "
                "--randomly-seed decides only their order"
            )
        return text

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_make_collect_report(self, collector: pytest.Collector) -> Generator[None, Any, Any]:
        if isinstance(collector, pytest.Session):
            return (yield)
        with self._scope(derive_seed(self.base, "collect", stable_id(collector))):
            return (yield)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, Any, Any]:
        if fixturedef.scope == "function":
            return (yield)
        # A session's node is where pytest started; every other scope's node has a file.
        where = "session" if fixturedef.scope == "session" else stable_id(request.node)
        keys = [where, fixturedef.argname, getattr(request, "param_index", 0)]
        with self._scope(derive_seed(self.base, "fixture", *keys)):
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, Any, Any]:
        saved_env = os.environ.get(_contract.SEED)
        calls, wanted, outer = self.rng_calls, self.wanted, self.scope_seed
        try:
            with seeding.isolate_seeding(rng=False):
                return (yield)
        finally:
            if saved_env is None:
                os.environ.pop(_contract.SEED, None)
            else:
                os.environ[_contract.SEED] = saved_env
            self.scope_seed, self.rng_calls, self.wanted = outer, calls, wanted

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        seed = item_seed(item)
        os.environ[_contract.SEED] = str(seed)
        self._enter(seed)

    def reseed_for_randomly(self) -> None:
        if self.wanted is not None:
            restore_all(self.wanted)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if report.failed:
            seed = item_seed(item)
            report.sections.append(
                (
                    "torchrepro",
                    f"test seed: {seed}\nreplay: {replay_command(item)}\nin a script: "
                    f"torchrepro.seed_everything({seed}) seeds Python, numpy and torch as this "
                    "test was seeded before its fixtures (torch.manual_seed would not)",
                )
            )
        return report

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        failed = [
            *terminalreporter.stats.get("failed", []),
            *terminalreporter.stats.get("error", []),
        ]
        ids = list(dict.fromkeys(r.nodeid for r in failed if getattr(r, "nodeid", "")))
        if not ids:
            return
        terminalreporter.write_line(
            f"torchrepro seed: {self.base}; replay a failure with {OPTION}={self.base}, e.g.:"
        )
        for nodeid in ids[:5]:
            terminalreporter.write_line(f"  {_replay(self.config, nodeid, self.base)}")

    @pytest.fixture
    def torchrepro_seed(self, request: pytest.FixtureRequest) -> int:
        """The seed of the running test: it was seeded with it before its fixtures.

        Examples:
            >>> def test_noise(torchrepro_seed):
            ...     generator = torch.Generator().manual_seed(torchrepro_seed)
        """
        # A function-scoped fixture's node is the test item itself.
        return item_seed(cast(pytest.Item, request.node))


def item_seed(item: pytest.Item) -> int:
    """The seed of one test: ``derive_seed(base_seed, "test", stable_id(item))``.

    Examples:
        >>> item_seed(item) == int(os.environ["TORCHREPRO_SEED"])  # item: this doctest
        True
    """
    if _test_seed_key not in item.stash:
        base = item.config.stash[_seeding_key].base
        item.stash[_test_seed_key] = derive_seed(base, "test", stable_id(item))
    return item.stash[_test_seed_key]


def _kept_options(args: Sequence[str]) -> list[str]:
    """The options of a pytest command line that a replay needs.

    Examples:
        >>> _kept_options(["-q", "-W", "ignore::DeprecationWarning", "-pno:randomly", "-k", "x"])
        ['-W', 'ignore::DeprecationWarning', '-pno:randomly']
    """
    kept: list[str] = []
    it = iter(args)
    for arg in it:
        if arg in _FLAGS_WITHOUT_VALUE:
            kept.append(arg)
        elif arg in _KEPT_OPTIONS:  # "-W VALUE", "--rootdir VALUE"
            kept += [arg, next(it, "")]
        elif arg.partition("=")[0] in _KEPT_OPTIONS or (
            arg[:2] in ("-p", "-W", "-c", "-o") and len(arg) > 2  # "-Werror", "-pno:x"
        ):
            kept.append(arg)
    return kept


def _replay(config: pytest.Config, nodeid: str, base: int) -> str:
    options = _kept_options(config.invocation_params.args)
    command = shlex.join(["pytest", nodeid, *options, f"{OPTION}={base}"])
    rootdir = config.rootpath
    if config.invocation_params.dir != rootdir:
        # Node ids are relative to the rootdir, not to where pytest was started.
        command = f"cd {shlex.quote(str(rootdir))} && {command}"
    return command


def replay_command(item: pytest.Item) -> str:
    """The shell command that reruns ``item`` with this session's seed and the options of
    this session that change collection or warnings.

    Examples:
        >>> print(replay_command(item).replace(item.nodeid, "NODE"))  # item: this doctest
        pytest NODE...--torchrepro-seed=...
    """
    return _replay(item.config, item.nodeid, item.config.stash[_seeding_key].base)


def reseed_for_randomly(seed: int) -> None:
    """pytest-randomly's ``random_seeder`` hook: undoes its reseeding while torchrepro seeds.

    pytest-randomly reseeds Python's and numpy's generators before each test phase and
    then calls this: it puts back the states torchrepro had in force (the test's streams,
    with what its fixtures drew). With torchrepro's plugin off it does nothing.

    Examples:
        >>> reseed_for_randomly(1234)  # pytest-randomly calls it; users need not
    """
    if _active is not None:
        _active.reseed_for_randomly()
