"""Commands that start several trainings: one record per training process, and check
pairing them across runs. Real processes (a shell running two Pythons, one after the other
or at once) through ``torchrepro check``."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from conftest import PYTHON, ROOT, SCRIPTS, child_env
from torchrepro.check import CheckReport, check_command
from torchrepro.errors import CheckError
from torchrepro.records import read_record

SCRIPT = str(SCRIPTS / "train_named.py")


def training(*args: str) -> str:
    """The shell words of one training process of train_named.py."""
    return " ".join([PYTHON, SCRIPT, *args])


def check_shell(line: str, **options: object) -> CheckReport:
    """check on `bash -c LINE`, with this checkout importable by the runs."""
    env = {"PYTHONPATH": child_env()["PYTHONPATH"]}
    return check_command(["bash", "-c", line], seed=1, env=env, **options)  # type: ignore[arg-type]


def test_concurrent_processes_claiming_one_run_path_each_get_a_file_of_their_own(
    tmp_path: Path,
) -> None:
    claim = (
        "import os, sys; from torchrepro.records.files import claim_record\n"
        "path, file = claim_record(sys.argv[1], 1, 0)\n"
        "file.write(str(os.getpid())); file.close()"
    )
    processes = [
        subprocess.Popen([PYTHON, "-c", claim, str(tmp_path / "run.jsonl")], env=child_env())
        for _ in range(6)
    ]
    pids = {str(process.pid) for process in processes}
    assert [process.wait(60) for process in processes] == [0] * 6
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["run.jsonl", *(f"run.p{n}.jsonl" for n in range(1, 6))]
    assert {path.read_text() for path in tmp_path.iterdir()} == pids


def test_two_trainings_one_after_the_other_diverge_in_the_nondeterministic_second(
    tmp_path: Path,
) -> None:
    report = check_shell(f"{training('a')} && {training('b', 'noise')}", workdir=tmp_path)
    assert report.verdict == "diverged", report.render()
    d = report.divergence
    assert d is not None and (d.process, d.step, d.section) == (2, 1, "grads")
    assert d.argv == (PYTHON, SCRIPT, "b", "noise")
    text = report.render()
    assert "in training process 2: python train_named.py b noise" in text
    # The replay traced b, the process that parted (a's step 1 is identical in both runs).
    where = report.localization
    assert where is not None and (where.kind, where.module) == ("input", "1"), text
    assert read_record(tmp_path / "run1.jsonl").header["argv"] == [PYTHON, SCRIPT, "a"]


def test_two_deterministic_trainings_one_after_the_other_are_identical_and_both_counted(
    tmp_path: Path,
) -> None:
    report = check_shell(f"{training('a')} && {training('b')}", workdir=tmp_path)
    assert report.verdict == "identical", report.render()
    assert report.steps_compared == 12
    assert [(p.order, p.command, p.steps) for p in report.processes] == [
        (1, "python train_named.py a", 6),
        (2, "python train_named.py b", 6),
    ]
    assert "bitwise identical: 2 runs, 2 training processes, 12 steps compared" in report.render()
    for run in (1, 2):
        first, second = (read_record(tmp_path / f"run{run}{p}.jsonl") for p in ("", ".p1"))
        assert first.header["argv"] == [PYTHON, SCRIPT, "a"]
        assert second.header["argv"] == [PYTHON, SCRIPT, "b"]
        assert first.header["started"] <= second.header["started"]
        assert first.header["pid"] != second.header["pid"]


def at_once(a: str, b: str) -> str:
    """A shell line starting trainings ``a`` and ``b`` together, in another order per run.

    In run 1, b starts once a recorded its first step (the run's record exists); in run 2,
    the other way round: their start order and record names are swapped between the runs.
    """
    after = 'while [ ! -e "$TORCHREPRO_RECORD" ]; do sleep 0.01; done'
    return (
        f'( [ "$TORCHREPRO_RUN" = 2 ] && {after}; exec {a} ) & '
        f'( [ "$TORCHREPRO_RUN" = 1 ] && {after}; exec {b} ) & wait'
    )


def test_two_trainings_at_once_are_paired_by_command_line_not_by_order_of_start(
    tmp_path: Path,
) -> None:
    report = check_shell(at_once(training("a"), training("b")), workdir=tmp_path)
    assert report.verdict == "identical", report.render()
    headers = {
        (run, record.header["argv"][-1]): record.header
        for run in (1, 2)
        for record in (read_record(path) for path in tmp_path.glob(f"run{run}*.jsonl"))
    }
    assert headers[1, "a"]["started"] < headers[1, "b"]["started"]
    assert headers[2, "b"]["started"] < headers[2, "a"]["started"]
    assert sorted((p.command, p.steps) for p in report.processes) == [
        ("python train_named.py a", 6),
        ("python train_named.py b", 6),
    ]


def test_two_trainings_at_once_diverge_in_the_nondeterministic_one_and_name_it() -> None:
    report = check_shell(at_once(training("a"), training("b", "noise")), localize=False)
    assert report.verdict == "diverged", report.render()
    d = report.divergence
    assert d is not None and d.step == 1 and d.argv[-2:] == ("b", "noise")
    assert "python train_named.py b noise" in report.render()


def test_a_training_process_that_runs_in_one_run_only_is_a_finding_that_names_it() -> None:
    report = check_shell(f"{training('a')} && {training('b', 'only-run-1')}")
    assert report.verdict == "diverged" and report.exit_code == 1, report.render()
    d = report.divergence
    assert d is not None and (d.missing_in, d.process) == (2, 2)
    text = report.render()
    assert "training process 2 of run 1 did not run in run 2" in text
    assert "missing process: python train_named.py b only-run-1" in text


def check_cli_stderr(terminal: bool) -> str:
    """What `torchrepro check` writes on stderr, a pseudo-terminal or a pipe."""
    command = [PYTHON, "-m", "torchrepro", "check", "--seed", "1", "--"]
    command += [PYTHON, SCRIPT, "a", "steps=12", "sleep=0.05"]
    if not terminal:
        result = subprocess.run(
            command, env=child_env(), capture_output=True, text=True, timeout=300, cwd=ROOT
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stderr
    main, side = pty.openpty()
    attributes = termios.tcgetattr(side)
    attributes[1] &= ~termios.OPOST  # keep "\n" as written (a terminal shows it as "\r\n")
    termios.tcsetattr(side, termios.TCSANOW, attributes)
    process = subprocess.Popen(
        command, env=child_env(), stdout=subprocess.PIPE, stderr=side, cwd=ROOT
    )
    os.close(side)
    written = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO: every writer closed its side
            break
        if not chunk:
            break
        written += chunk
    os.close(main)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out.decode() + written.decode()
    return written.decode()


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_progress_is_one_line_updated_in_place_on_a_terminal_and_absent_in_a_pipe(
    terminal: bool,
) -> None:
    stderr = check_cli_stderr(terminal)
    header, _, progress = stderr.partition("\n")
    assert header == "torchrepro check: 2 runs, side by side ..."
    if not terminal:
        assert progress == "" and "\r" not in stderr
        return
    assert progress.endswith("\n") and "\n" not in progress[:-1]
    updates = progress[:-1].split("\r")
    assert updates[0] == "" and len(updates) > 2, updates
    assert updates[-1].startswith("steps compared: 12, ") and updates[-1].rstrip().endswith(" s")


def test_a_timeout_kills_what_a_run_started_even_when_it_ignores_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("torchrepro.check.processes.GRACE_SECONDS", 1.0)
    pids = tmp_path / "pids"
    stubborn = (
        "import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "open(sys.argv[1], 'a').write(f'{os.getpid()}\\n'); time.sleep(600)"
    )
    # bash exits on SIGTERM; its child ignores it and would outlive the run.
    line = f'{PYTHON} -c "{stubborn}" {pids} & wait'
    report = check_shell(line, timeout=3, workdir=tmp_path / "work")
    assert report.verdict == "failed", report.render()
    started = [int(pid) for pid in pids.read_text().split()]
    assert len(started) == 2  # one per run
    assert not [pid for pid in started if alive(pid)]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs; a killed orphan is a zombie until init reaps it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_an_unwritable_json_path_is_refused_before_any_run_starts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from torchrepro.cli import main

    marker = tmp_path / "ran"
    command = [PYTHON, "-c", f"open({str(marker)!r}, 'w')"]
    code = main(["check", "--json", "/nonexistent/dir/r.json", "--", *command])
    assert code == 2 and not marker.exists()
    out, err = capsys.readouterr()
    assert "bitwise identical" not in out
    assert "--json '/nonexistent/dir/r.json': no folder '/nonexistent/dir'" in err


def test_plot_without_matplotlib_is_refused_before_any_run_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    marker = tmp_path / "ran"
    with pytest.raises(CheckError, match="--plot needs matplotlib"):
        check_command([PYTHON, "-c", f"open({str(marker)!r}, 'w')"], plot=tmp_path / "p.png")
    assert not marker.exists()
