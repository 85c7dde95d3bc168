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
from pathlib import Path

import numpy as np
import pytest
import torch

import torchrepro
from torchrepro import isolate_rng, pytest_plugin
from torchrepro._derive import derive_seed
from torchrepro._sources import _seed_torch, seed_all

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
    result.stdout.fnmatch_lines(["torchrepro seed: 123 (repeat with --torchrepro-seed=123)"])


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
    assert f"replay: pytest '{failure.group(1)}' --torchrepro-seed=1" in text

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


def test_state_a_test_changes_through_torchrepro_does_not_leak_into_the_next(
    tester: pytest.Pytester,
) -> None:
    tester.makepyfile(
        test_leaks="""
        import os
        import torch
        import torchrepro

        def test_changes_everything():
            torchrepro.seed_everything(5, deterministic=True)

        def test_sees_none_of_it(torchrepro_seed):
            assert not torch.are_deterministic_algorithms_enabled()
            assert "FLASH_ATTENTION_DETERMINISTIC" not in os.environ
            from torchrepro.seeding import root_seed

            assert root_seed() == torchrepro_seed
        """
    )
    before = torchrepro.determinism.snapshot()
    tester.runpytest("-p", "no:randomly").assert_outcomes(passed=2)
    assert torchrepro.determinism.snapshot() == before


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


def test_pytest_randomly_alone_seeds_torch_through_the_random_seeder_entry_point(
    tester: pytest.Pytester,
) -> None:
    pytest.importorskip("pytest_randomly")
    tester.makepyfile(
        test_torch="""
        import torch

        def test_draw():
            print("DRAW", torch.rand(1).item())
        """
    )
    draws = []
    for randomly_seed in ("1", "2", "1"):
        result = tester.runpytest_subprocess(
            "-p", "no:torchrepro", "-p", "randomly", f"--randomly-seed={randomly_seed}", "-s"
        )
        result.assert_outcomes(passed=1)
        draws.append(re.findall(r"DRAW (\S+)", result.stdout.str()))
    assert draws[0] == draws[2]
    assert draws[0] != draws[1]


def test_reseed_for_randomly_seeds_torch_from_randomlys_seed_outside_torchrepro_tests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pytest_plugin, "_phase_seed", None)
    with isolate_rng():
        pytest_plugin.reseed_for_randomly(1)
        first = torch.rand(3)
        pytest_plugin.reseed_for_randomly(1)
        assert torch.equal(torch.rand(3), first)
        _seed_torch(derive_seed(1, "torch"))
        assert torch.equal(torch.rand(3), first)


def test_reseed_for_randomly_puts_torchrepros_phase_seed_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pytest_plugin, "_phase_seed", 42)
    with isolate_rng():
        seed_all(42)
        expected = (random.random(), np.random.rand(), torch.rand(2))
        pytest_plugin.reseed_for_randomly(1)
        assert random.random() == expected[0]
        assert np.random.rand() == expected[1]
        assert torch.equal(torch.rand(2), expected[2])


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
