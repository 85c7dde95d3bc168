"""The pytest plugin: every test seeded, the seed printed, a failure replayed by copy-paste.

Installed with torchrepro (entry point ``pytest11``), it is active in every pytest run of
the environment; ``-p no:torchrepro`` switches it off. What it does:

- Resolves one base seed per session: ``--torchrepro-seed=N``, ``--torchrepro-seed=last``
  (the previous run's, from pytest's cache) or, by default, a fresh one. The header prints
  it (``torchrepro seed: N``) and the cache keeps it for ``last``. pytest-xdist workers get
  the controller's seed.
- Derives each test's seed from the base seed and the test's node id
  (``derive_seed(base, "test", nodeid)``), so a test draws the same numbers whichever tests
  ran before it, with ``-k`` or under xdist. The test body runs right after
  ``seed_all(test_seed)``; its setup and teardown get seeds derived from the test seed.
  ``TORCHREPRO_SEED`` holds the test seed while the test runs, so ``seed_everything()``
  and child processes inside the test follow it.
- Restores, after each test, every RNG state, the determinism flags, the environment
  variables torchrepro manages and its DataLoader seeding (:func:`torchrepro.isolate_rng`).
  A session- or module-scoped fixture set up during a test is rolled back with that test;
  apply session-wide settings in ``conftest.py`` (at import or in ``pytest_configure``).
- Adds a ``torchrepro`` section to a failing test's report with the command replaying it.
- Beside pytest-randomly, whose reseeding would otherwise overwrite Python's and numpy's
  streams, :func:`reseed_for_randomly` (entry point ``pytest_randomly.random_seeder``)
  puts torchrepro's seeding back; with ``-p no:torchrepro`` it seeds torch from
  pytest-randomly's seed instead, which pytest-randomly alone does not do.

Example:
    A test that fails for some seeds prints, in its report::

        --------------------------------- torchrepro ---------------------------------
        replay: pytest 'tests/test_model.py::test_dropout' --torchrepro-seed=2718281828
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
from collections.abc import Generator
from typing import Any, cast

import pytest

from torchrepro import _contract, seeding
from torchrepro._derive import derive_seed, normalize_seed
from torchrepro._sources import available_sources, seed_all
from torchrepro.errors import SeedError

OPTION = "--torchrepro-seed"
CACHE_KEY = "torchrepro/seed"
_WORKER_KEY = "torchrepro_seed"

_base_seed_key = pytest.StashKey[int]()
_test_seed_key = pytest.StashKey[int]()
_outer_phase_key = pytest.StashKey["int | None"]()

# The seed torchrepro last applied and wants in force: the session's outside tests, a
# test phase's inside one. pytest-randomly reseeds after our hooks in some plugin orders;
# its callback (reseed_for_randomly) reads this to put our seeding back.
_phase_seed: int | None = None


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
        "'last' for the previous run's. Default: a fresh seed, printed in the header.",
    )


def _resolve_base_seed(config: pytest.Config) -> int:
    option = config.getoption("torchrepro_seed")
    if option != "last":
        return int(option) if option is not None else secrets.randbelow(2**32)
    cache = getattr(config, "cache", None)
    last = None if cache is None else cache.get(CACHE_KEY, None)
    if not isinstance(last, int):
        where = (
            "pytest's cache is off: -p no:cacheprovider"
            if cache is None
            else "none in .pytest_cache"
        )
        raise pytest.UsageError(
            f"{OPTION}=last: no previous run's seed was found ({where}). "
            f"Run once without it, or pass the seed printed in that run's header ({OPTION}=N)."
        )
    return last


class _XdistHooks:
    """Registered only under pytest-xdist, whose hook this is."""

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[_WORKER_KEY] = node.config.stash[_base_seed_key]


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(), "torchrepro-xdist")
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and _WORKER_KEY in workerinput:
        # An xdist worker: the controller resolved the seed and wrote the cache.
        config.stash[_base_seed_key] = int(workerinput[_WORKER_KEY])
        return
    seed = _resolve_base_seed(config)
    config.stash[_base_seed_key] = seed
    cache = getattr(config, "cache", None)
    if cache is not None:
        cache.set(CACHE_KEY, seed)


def pytest_report_header(config: pytest.Config) -> str:
    seed = config.stash[_base_seed_key]
    return f"torchrepro seed: {seed} (repeat with {OPTION}={seed})"


def _apply(seed: int) -> None:
    global _phase_seed
    _phase_seed = seed
    seed_all(seed)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    # Seeds what runs during collection (module-level draws), the same on every xdist worker.
    session.config.stash[_outer_phase_key] = _phase_seed
    _apply(derive_seed(session.config.stash[_base_seed_key], "session"))


def pytest_sessionfinish(session: pytest.Session) -> None:
    global _phase_seed
    _phase_seed = session.config.stash.get(_outer_phase_key, None)


def item_seed(item: pytest.Item) -> int:
    """The seed of one test: ``derive_seed(base_seed, "test", item.nodeid)``.

    Example:
        >>> item_seed(item) == int(os.environ["TORCHREPRO_SEED"])  # item: this doctest
        True
    """
    if _test_seed_key not in item.stash:
        base = item.config.stash[_base_seed_key]
        item.stash[_test_seed_key] = derive_seed(base, "test", item.nodeid)
    return item.stash[_test_seed_key]


def _seed_phase(item: pytest.Item, phase: str) -> None:
    seed = item_seed(item)
    os.environ[_contract.SEED] = str(seed)
    _apply(seed if phase == "call" else derive_seed(seed, phase))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, Any, Any]:
    global _phase_seed
    outer = _phase_seed
    try:
        with seeding.isolate_rng():
            return (yield)
    finally:
        _phase_seed = outer


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _seed_phase(item, "setup")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    _seed_phase(item, "call")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    _seed_phase(item, "teardown")


def replay_command(item: pytest.Item) -> str:
    """The shell command that reruns ``item`` with this session's seed.

    Example:
        >>> print(replay_command(item).replace(item.nodeid, "NODE"))  # item: this doctest
        pytest NODE --torchrepro-seed=...
    """
    seed = item.config.stash[_base_seed_key]
    command = f"pytest {shlex.quote(item.nodeid)} {OPTION}={seed}"
    rootdir = item.config.rootpath
    if item.config.invocation_params.dir != rootdir:
        # Node ids are relative to the rootdir, not to where pytest was started.
        command = f"cd {shlex.quote(str(rootdir))} && {command}"
    return command


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        report.sections.append(
            ("torchrepro", f"test seed: {item_seed(item)}\nreplay: {replay_command(item)}")
        )
    return report


@pytest.fixture
def torchrepro_seed(request: pytest.FixtureRequest) -> int:
    """The seed of the running test; the test body starts right after ``seed_all`` of it.

    Example:
        >>> def test_noise(torchrepro_seed):
        ...     generator = torch.Generator().manual_seed(torchrepro_seed)
    """
    # A function-scoped fixture's node is the test item itself.
    return item_seed(cast(pytest.Item, request.node))


def reseed_for_randomly(seed: int) -> None:
    """pytest-randomly's ``random_seeder`` hook: keeps torch in step with its reseeding.

    pytest-randomly reseeds Python's and numpy's generators before each test phase and
    then calls this. While torchrepro's plugin is seeding, it puts torchrepro's seeding
    back (the last reseed wins, and both plugins reseed each phase); otherwise it seeds
    torch and its devices from pytest-randomly's seed, which pytest-randomly does not.

    Example:
        >>> reseed_for_randomly(1234)  # pytest-randomly calls it; users need not
    """
    if _phase_seed is not None:
        seed_all(_phase_seed)
        return
    torch_seed = derive_seed(seed, "torch")
    for source in available_sources():
        if source.seed_key == "torch":
            source.seed(torch_seed)
