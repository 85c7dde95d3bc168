"""The pytest plugin, exercised through real pytest sessions (pytester).

The plugin is loaded as an installed torchrepro loads it: through the entry points that
pyproject.toml declares, written into a throwaway ``.dist-info`` put first on the path.
So ``-p no:torchrepro`` and pytest-randomly's ``random_seeder`` group are tested as users
meet them, whether or not this checkout is installed.
"""

from __future__ import annotations

import importlib.metadata
import json
import random
import re
import shlex
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import torchrepro
from torchrepro import isolate_rng, pytest_plugin
from torchrepro._derive import derive_seed
from torchrepro._sources import capture_all, seed_all

pytest_plugins = ["pytester"]

SRC = Path(torchrepro.__file__).resolve().parents[1]
PYPROJECT = SRC.parent / "pyproject.toml"

DRAWS = """
import json, random
from pathlib import Path

import numpy as np
import pytest
import torch


def record(name, seed):
    out = Path(__file__).parent / "draws"
    out.mkdir(exist_ok=True)
    draws = [seed, random.random(), float(np.random.rand()), torch.rand(2).tolist()]
    (out / f"{name}.json").write_text(json.dumps(draws))


def test_a(torchrepro_seed):
    record("a", torchrepro_seed)


def test_b(torchrepro_seed):
    record("b", torchrepro_seed)


@pytest.mark.parametrize("i", range(3))
def test_c(i, torchrepro_seed):
    record(f"c{i}", torchrepro_seed)
"""

COINS = """
import pytest
import torch


@pytest.mark.parametrize("i", range(12))
def test_coin(i):
    assert torch.rand(1).item() < 0.5
"""


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a dist-info with the entry points pyproject.toml declares."""
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"]
    root = tmp_path_factory.mktemp("site")
    info = root / "torchrepro_plugin_under_test-0.0.dist-info"
    info.mkdir()
    info.joinpath("METADATA").write_text(
        "Metadata-Version: 2.1\nName: torchrepro-plugin-under-test\nVersion: 0.0\n"
    )
    lines = []
    for group, entries in declared.items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in entries.items()]
    info.joinpath("entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def tester(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, site: Path
) -> pytest.Pytester:
    """pytester whose sessions, in this process or in a subprocess, load the plugin."""
    monkeypatch.syspath_prepend(str(site))
    # Absolute paths: subprocess sessions start in pytester's directory.
    monkeypatch.setenv("PYTHONPATH", f"{site}:{SRC}")
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    return pytester


def read_draws(pytester: pytest.Pytester) -> dict[str, list[object]]:
    folder = pytester.path / "draws"
    draws = {path.stem: json.loads(path.read_text()) for path in folder.glob("*.json")}
    for path in folder.glob("*.json"):
        path.unlink()
    return draws


def header_seed(result: pytest.RunResult) -> int:
    match = re.search(r"^torchrepro seed: (\d+)", result.stdout.str(), re.MULTILINE)
    assert match is not None, result.stdout.str()
    return int(match.group(1))


def outcomes(result: pytest.RunResult) -> dict[str, str]:
    found = re.findall(r"^(PASSED|FAILED) (\S+)", result.stdout.str(), re.MULTILINE)
    return {nodeid: outcome for outcome, nodeid in found}


def test_the_header_shows_the_base_seed(tester: pytest.Pytester) -> None:
    tester.makepyfile(test_draws=DRAWS)
    result = tester.runpytest("--torchrepro-seed=123", "-p", "no:randomly")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["torchrepro seed: 123 (given; repeat with --torchrepro-seed=123)"])


def test_each_test_body_starts_right_after_seed_all_of_its_derived_seed(
    tester: pytest.Pytester,
) -> None:
    tester.makepyfile(test_draws=DRAWS)
    tester.runpytest("--torchrepro-seed=7", "-p", "no:randomly").assert_outcomes(passed=5)
    draws = read_draws(tester)
    seed = derive_seed(7, "test", "test_draws.py::test_c[1]")
    with isolate_rng():
        seed_all(seed)
        expected = [seed, random.random(), float(np.random.rand()), torch.rand(2).tolist()]
    assert draws["c1"] == expected


def test_coin_flips_pass_and_fail_alike_in_two_sessions_with_one_seed_and_differ_across_seeds(
    tester: pytest.Pytester,
) -> None:
    tester.makepyfile(test_coins=COINS)
    first = outcomes(tester.runpytest("--torchrepro-seed=1", "-rA", "-p", "no:randomly"))
    again = outcomes(tester.runpytest("--torchrepro-seed=1", "-rA", "-p", "no:randomly"))
    other = outcomes(tester.runpytest("--torchrepro-seed=2", "-rA", "-p", "no:randomly"))
    assert len(first) == 12
    assert set(first.values()) == {"PASSED", "FAILED"}
    assert first == again
    assert first != other


def test_a_failing_test_reports_a_command_that_replays_its_failure(
    tester: pytest.Pytester,
) -> None:
    tester.makepyfile(test_coins=COINS)
    result = tester.runpytest("--torchrepro-seed=1", "-p", "no:randomly")
    text = result.stdout.str()
    replays = re.findall(r"^replay: (pytest .*)$", text, re.MULTILINE)
    assert replays, text
    failure = re.search(r"^FAILED (\S+) - (.*)$", text, re.MULTILINE)
    assert failure is not None
    assert f"replay: pytest '{failure.group(1)}' -p no:randomly --torchrepro-seed=1" in text

    replayed = tester.runpytest(*shlex.split(replays[0])[1:], "-p", "no:randomly")
    replayed.assert_outcomes(failed=1)
    replayed.stdout.fnmatch_lines([f"FAILED {failure.group(1)} - {failure.group(2)}"])


def test_a_tests_draws_do_not_depend_on_which_tests_ran_before_it(
    tester: pytest.Pytester,
) -> None:
    tester.makepyfile(test_draws=DRAWS)
    tester.runpytest("--torchrepro-seed=5", "-p", "no:randomly").assert_outcomes(passed=5)
    everything = read_draws(tester)
    tester.runpytest("--torchrepro-seed=5", "-p", "no:randomly", "-k", "b or c")
    selected = read_draws(tester)
    reversed_ids = ["test_draws.py::test_c[2]", "test_draws.py::test_b", "test_draws.py::test_a"]
    tester.runpytest("--torchrepro-seed=5", "-p", "no:randomly", *reversed_ids)
    reordered = read_draws(tester)
    assert selected == {name: everything[name] for name in ("b", "c0", "c1", "c2")}
    assert reordered == {name: everything[name] for name in ("a", "b", "c2")}
    assert len({json.dumps(draws[1:]) for draws in everything.values()}) == 5


def test_last_reuses_the_previous_sessions_seed(tester: pytest.Pytester) -> None:
    tester.makepyfile(test_draws=DRAWS)
    fresh = tester.runpytest("-p", "no:randomly")
    first = read_draws(tester)
    last = tester.runpytest("--torchrepro-seed=last", "-p", "no:randomly")
    assert header_seed(last) == header_seed(fresh)
    assert read_draws(tester) == first


def test_last_without_a_previous_seed_is_a_usage_error(tester: pytest.Pytester) -> None:
    tester.makepyfile(test_draws=DRAWS)
    result = tester.runpytest("--torchrepro-seed=last", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--torchrepro-seed=last: no previous run's seed*"])


@pytest.mark.parametrize("value", ["-1", "abc", str(2**64)])
def test_a_bad_seed_is_a_usage_error_that_says_what_is_accepted(
    tester: pytest.Pytester, value: str
) -> None:
    result = tester.runpytest(f"--torchrepro-seed={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--torchrepro-seed must be an int in [[]0, 2**64) or 'last'*"])


def test_p_no_torchrepro_switches_the_plugin_off(tester: pytest.Pytester) -> None:
    tester.makepyfile(test_draws=DRAWS)
    result = tester.runpytest("-p", "no:torchrepro", "-p", "no:randomly")
    result.assert_outcomes(errors=5)
    result.stdout.fnmatch_lines(["*fixture 'torchrepro_seed' not found*"])
    assert "torchrepro seed:" not in result.stdout.str()


def test_seeding_a_test_changes_does_not_leak_into_the_next_but_its_flags_are_its_own(
    tester: pytest.Pytester,
) -> None:
    tester.makepyfile(
        test_leaks="""
        import torch
        import torchrepro
        from torchrepro.seeding import root_seed

        def test_changes_everything():
            torchrepro.seed_everything(5, deterministic=True)

        def test_sees_its_own_seed_and_the_suites_flags(torchrepro_seed):
            assert root_seed() == torchrepro_seed
            # The flags are the suite's: as without the plugin, they stay as set.
            assert torch.are_deterministic_algorithms_enabled()
        """
    )
    tester.runpytest("-p", "no:randomly").assert_outcomes(passed=2)


def test_xdist_workers_draw_what_the_serial_run_draws_with_the_controllers_seed(
    tester: pytest.Pytester,
) -> None:
    pytest.importorskip("xdist")
    tester.makepyfile(test_draws=DRAWS)
    distributed = tester.runpytest_subprocess("-n", "2", "-p", "no:randomly")
    distributed.assert_outcomes(passed=5)
    parallel = read_draws(tester)
    seed = header_seed(distributed)
    tester.runpytest(f"--torchrepro-seed={seed}", "-p", "no:randomly").assert_outcomes(passed=5)
    assert read_draws(tester) == parallel


def test_beside_pytest_randomly_torchrepros_seeds_win_whatever_the_order(
    tester: pytest.Pytester,
) -> None:
    pytest.importorskip("pytest_randomly")
    tester.makepyfile(test_draws=DRAWS)
    tester.runpytest("--torchrepro-seed=9", "-p", "no:randomly").assert_outcomes(passed=5)
    alone = read_draws(tester)
    for randomly_seed in ("1", "2"):
        result = tester.runpytest_subprocess(
            "--torchrepro-seed=9", "-p", "randomly", f"--randomly-seed={randomly_seed}"
        )
        result.assert_outcomes(passed=5)
        assert read_draws(tester) == alone


def test_reseed_for_randomly_does_nothing_while_the_plugin_is_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pytest_plugin, "_active", None)
    with isolate_rng():
        before = capture_all()
        pytest_plugin.reseed_for_randomly(1)
        after = capture_all()
    assert torch.equal(before["torch"], after["torch"])


def test_reseed_for_randomly_puts_back_the_streams_torchrepro_had_in_force(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    active = pytest_plugin._active
    assert active is not None  # this suite runs under the plugin
    with isolate_rng():
        monkeypatch.setattr(active, "wanted", capture_all())
        expected = draws_now()
        random.seed(1)  # what pytest-randomly does before it calls the seeder
        np.random.seed(1)
        pytest_plugin.reseed_for_randomly(1)
        assert draws_now() == expected


def test_the_installed_distribution_registers_the_plugin_and_the_randomly_seeder() -> None:
    entry_points = importlib.metadata.distribution("torchrepro").entry_points
    registered = {(ep.group, ep.name): ep.value for ep in entry_points}
    assert registered.get(("pytest11", "torchrepro")) == "torchrepro.pytest_plugin", (
        "reinstall torchrepro (pip install -e .) so its metadata has the pytest11 entry point"
    )
    assert (
        registered.get(("pytest_randomly.random_seeder", "torchrepro"))
        == "torchrepro.pytest_plugin:reseed_for_randomly"
    )


# Issue: the plugin on real suites. Each test below stands for one way real suites
# (einops, pytorch-optimizer, geoopt) met the plugin.

RECORD = """
import json, random
from pathlib import Path

import numpy as np
import torch


def record(name, *values):
    out = Path(__file__).parent / "draws"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(list(values)))
"""


def draws_now() -> list[object]:
    return [random.random(), float(np.random.rand()), torch.rand(2).tolist()]


@pytest.mark.parametrize("off", [["-p", "no:torchrepro"], ["-o", "torchrepro=false"]])
def test_switched_off_no_part_of_torchrepro_reseeds_even_beside_pytest_randomly(
    tester: pytest.Pytester, off: list[str]
) -> None:
    pytest.importorskip("pytest_randomly")
    tester.makepyfile(
        record=RECORD,
        test_torch="""
        import torch
        from record import record

        torch.manual_seed(123)

        def test_first():
            record("first", torch.rand(2).tolist())

        def test_second():
            record("second", torch.rand(2).tolist())
        """,
    )
    result = tester.runpytest_subprocess(*off, "-p", "randomly", "--randomly-seed=3")
    result.assert_outcomes(passed=2)
    assert "torchrepro seed" not in result.stdout.str()
    drawn = read_draws(tester)
    with isolate_rng():
        torch.manual_seed(123)
        stream = [torch.rand(2).tolist(), torch.rand(2).tolist()]
    # torch's stream flows on from the module's own seeding, in whichever order they ran.
    assert sorted([drawn["first"][0], drawn["second"][0]]) == sorted(stream)


def test_flags_and_variables_a_wider_fixture_sets_live_for_its_scope(
    tester: pytest.Pytester,
) -> None:
    tester.makeconftest(
        """
        import os
        import pytest

        @pytest.fixture(scope="session", autouse=True)
        def workspace():
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
            os.environ["OTHER_SETTING"] = "1"
            yield
        """
    )
    tester.makepyfile(
        test_flags="""
        import os
        import pytest
        import torch

        @pytest.fixture(scope="module", autouse=True)
        def strict():
            torch.use_deterministic_algorithms(True)
            yield
            torch.use_deterministic_algorithms(False)

        @pytest.mark.parametrize("i", range(3))
        def test_sees_the_fixtures_settings(i):
            assert torch.are_deterministic_algorithms_enabled()
            assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == ":4096:8"
            assert os.environ.get("OTHER_SETTING") == "1"
        """
    )
    tester.runpytest("-p", "no:randomly").assert_outcomes(passed=3)


def test_a_fixture_that_seeds_is_respected_in_the_test_body(tester: pytest.Pytester) -> None:
    tester.makepyfile(
        record=RECORD,
        test_own_seed="""
        import pytest
        import torch
        from record import record

        @pytest.fixture(autouse=True, params=[30, 31])
        def seeded(request):
            torch.manual_seed(request.param)
            return request.param

        def test_draws(seeded):
            record(f"s{seeded}", torch.rand(3).tolist())
        """,
    )
    tester.runpytest("-p", "no:randomly").assert_outcomes(passed=2)
    drawn = read_draws(tester)
    for seed in (30, 31):
        with isolate_rng():
            torch.manual_seed(seed)
            assert drawn[f"s{seed}"] == [torch.rand(3).tolist()]


SCOPES = """
import random

import numpy as np
import pytest
import torch
from record import record

GENERATOR = np.random.default_rng()  # unseeded, at import
AT_IMPORT = [*torch.rand(2).tolist(), float(GENERATOR.random())]
VALUES = [random.randrange(10**9) for _ in range(2)]


@pytest.fixture(scope="module")
def data():
    return [random.random(), float(np.random.rand()), torch.rand(2).tolist()]


@pytest.fixture(scope="session")
def shared():
    return torch.rand(2).tolist()


@pytest.mark.parametrize("value", VALUES)
def test_one(value, data, shared):
    record(f"{MODULE}-one-{VALUES.index(value)}", value, AT_IMPORT, data, shared,
           torch.rand(1).item())


def test_two(data, shared):
    record(f"{MODULE}-two", AT_IMPORT, data, shared, torch.rand(1).item())
"""


def write_scoped_suite(tester: pytest.Pytester) -> None:
    tester.makepyfile(
        record=RECORD,
        test_m1="MODULE = 'm1'\n" + SCOPES,
        test_m2="MODULE = 'm2'\n" + SCOPES,
    )


def node_ids(result: pytest.RunResult) -> list[str]:
    return re.findall(r"^(test_m\d\.py::\S+) PASSED", result.stdout.str(), re.MULTILINE)


def test_replays_draw_what_the_run_drew_at_every_scope(tester: pytest.Pytester) -> None:
    write_scoped_suite(tester)
    full = tester.runpytest("--torchrepro-seed=11", "-p", "no:randomly", "-v")
    full.assert_outcomes(passed=6)
    everything = read_draws(tester)
    ids = node_ids(full)
    assert len(ids) == 6
    # Each test alone, as a replay runs it: the module fixture, the session fixture, the
    # import-time draws, the numpy Generator and the random parametrize ids all repeat.
    for nodeid in ids[::-1]:
        alone = tester.runpytest("--torchrepro-seed=11", "-p", "no:randomly", nodeid)
        alone.assert_outcomes(passed=1)
    assert read_draws(tester) == everything
    # The two modules draw differently from each other, and another seed draws otherwise.
    assert everything["m1-two"] != everything["m2-two"]
    tester.runpytest("--torchrepro-seed=12", "-p", "no:randomly").assert_outcomes(passed=6)
    other = read_draws(tester)
    assert all(other[name] != everything[name] for name in everything)


def test_scoped_draws_are_the_same_serially_under_pytest_randomly_and_under_xdist(
    tester: pytest.Pytester,
) -> None:
    pytest.importorskip("pytest_randomly")
    pytest.importorskip("xdist")
    write_scoped_suite(tester)
    tester.runpytest("--torchrepro-seed=5", "-p", "no:randomly").assert_outcomes(passed=6)
    serial = read_draws(tester)
    for randomly_seed in ("1", "2"):
        shuffled = tester.runpytest_subprocess(
            "--torchrepro-seed=5", "-p", "randomly", f"--randomly-seed={randomly_seed}"
        )
        shuffled.assert_outcomes(passed=6)
        assert read_draws(tester) == serial
    spread = tester.runpytest_subprocess("--torchrepro-seed=5", "-n", "2", "-p", "no:randomly")
    spread.assert_outcomes(passed=6)
    assert read_draws(tester) == serial


def test_a_tests_seed_does_not_depend_on_where_pytest_is_started(
    tester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite = tester.mkdir("suite")
    (suite / "record.py").write_text(textwrap.dedent(RECORD))
    (suite / "test_where.py").write_text(
        "import torch\nfrom record import record\n\n"
        "def test_draw(torchrepro_seed):\n"
        "    record('where', torchrepro_seed, torch.rand(2).tolist())\n"
    )
    drawn = []
    for folder in (tester.path, suite):  # no config file: pytest's rootdir is where it starts
        monkeypatch.chdir(folder)
        result = tester.runpytest_subprocess("--torchrepro-seed=3", "-p", "no:randomly")
        result.assert_outcomes(passed=1)
        drawn.append(json.loads((suite / "draws" / "where.json").read_text()))
    assert drawn[0] == drawn[1]


def test_lf_reuses_the_last_seed_and_the_summary_prints_it_even_quiet(
    tester: pytest.Pytester,
) -> None:
    tester.makepyfile(test_coins=COINS)
    first = tester.runpytest("-p", "no:randomly", "-q", "--tb=no")
    seed = int(re.search(r"^torchrepro seed: (\d+);", first.stdout.str(), re.MULTILINE)[1])
    failed = set(re.findall(r"FAILED (\S+)", first.stdout.str()))
    assert failed
    again = tester.runpytest("-p", "no:randomly", "--lf", "-rA")
    assert header_seed(again) == seed
    assert "the last run's, for --lf/--ff" in again.stdout.str()
    assert {n for n, o in outcomes(again).items() if o == "FAILED"} == failed


def test_a_replay_keeps_the_options_that_change_collection_and_warnings(
    tester: pytest.Pytester,
) -> None:
    tester.makeini("[pytest]\nfilterwarnings = error\n")
    tester.makepyfile(
        test_warns="""
        import warnings
        import torch

        warnings.warn("old api", DeprecationWarning)

        def test_coin():
            assert torch.rand(1).item() < 0.0
        """
    )
    result = tester.runpytest("-W", "ignore::DeprecationWarning", "-p", "no:randomly")
    result.assert_outcomes(failed=1)
    [replay] = re.findall(r"^replay: (pytest .*)$", result.stdout.str(), re.MULTILINE)
    assert "-W ignore::DeprecationWarning" in replay
    tester.runpytest(*shlex.split(replay)[1:]).assert_outcomes(failed=1)


def test_the_failure_report_says_how_to_draw_the_same_in_a_script(
    tester: pytest.Pytester,
) -> None:
    tester.makepyfile(
        test_fails="""
        import random
        import numpy as np
        import torch

        def test_fails():
            print("DRAWS", [random.random(), float(np.random.rand()), torch.rand(2).tolist()])
            assert False
        """
    )
    result = tester.runpytest("-p", "no:randomly")
    text = result.stdout.str()
    seed = int(re.search(r"^test seed: (\d+)", text, re.MULTILINE)[1])
    assert f"torchrepro.seed_everything({seed}) seeds Python, numpy and torch" in text
    printed = re.search(r"^DRAWS (.*)$", text, re.MULTILINE)[1]
    with isolate_rng():
        torchrepro.seed_everything(seed)
        assert printed == str(draws_now())


def test_beside_pytest_randomly_the_header_says_which_seed_controls_what(
    tester: pytest.Pytester,
) -> None:
    pytest.importorskip("pytest_randomly")
    tester.makepyfile(test_draws=DRAWS)
    result = tester.runpytest_subprocess("-p", "randomly", "--randomly-seed=4")
    result.stdout.fnmatch_lines(
        ["*torchrepro's seed decides every draw in the tests; pytest-randomly's*only their order"]
    )


def test_an_unseeded_numpy_generator_made_at_import_repeats_with_the_seed(
    tester: pytest.Pytester,
) -> None:
    tester.makepyfile(
        test_generator="""
        import numpy as np

        RNG = np.random.default_rng()

        def test_draw():
            print("DRAW", RNG.random())
        """
    )
    drawn = []
    for seed in ("1", "1", "2"):
        result = tester.runpytest(f"--torchrepro-seed={seed}", "-p", "no:randomly", "-s")
        drawn.append(re.findall(r"DRAW (\S+)", result.stdout.str()))
    assert drawn[0] == drawn[1] != drawn[2]
