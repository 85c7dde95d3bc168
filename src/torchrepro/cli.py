"""The ``torchrepro`` command: argument parsing only; every verb calls the library.

Exit status (:class:`torchrepro.errors.ExitCode`): 0 success, 1 a finding (runs diverged),
2 a usage error, 3 a run failed, 130 interrupted. A verb that runs a command (``run``)
exits with that command's status. The launching process never imports torch: each verb
imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from torchrepro.errors import ExitCode, TorchReproError


def _command(args: argparse.Namespace) -> list[str]:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise SystemExit(
            f"torchrepro {args.verb}: no command given; usage: torchrepro "
            f"{args.verb} [options] -- python train.py ARGS"
        )
    return command


def _write_json(path: str, data: object) -> None:
    import json

    from torchrepro._files import atomic_text_writer

    with atomic_text_writer(path) as file:
        file.write(json.dumps(data, indent=2) + "\n")


def _add_determinism_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--deterministic",
        dest="deterministic",
        action="store_const",
        const=True,
        help="also switch on deterministic algorithms (strict)",
    )
    group.add_argument(
        "--warn",
        dest="deterministic",
        action="store_const",
        const="warn",
        help="deterministic algorithms in warn-only mode",
    )


def _add_take_over_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--take-over",
        dest="take_over",
        action="store_const",
        const=True,
        default=None,
        help="a script that seeds itself (torch.manual_seed(1111), np.random.seed, "
        "random.seed, transformers.set_seed, pl.seed_everything) gets seeds derived from "
        "--seed instead, so a seed sweep needs no code change (default: such calls keep "
        "their seed, are named once on stderr, and loaders follow them; "
        "TORCHREPRO_TAKE_OVER=1 does the same)",
    )


def _seed_option(text: str) -> int | str:
    """A seed of ASCII digits is an int ("-1" and 5,000 digits are refused, not hashed);
    anything else a str, hashed."""
    from torchrepro._derive import parse_seed_text

    digits = text.lstrip("+-")
    if not (digits.isascii() and digits.isdigit()):
        return text
    try:
        return parse_seed_text(text, "--seed")
    except TorchReproError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _run(args: argparse.Namespace) -> int:
    from torchrepro.launch import exec_command

    exec_command(_command(args), args.seed, args.deterministic, args.take_over)


def _add_run(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a command seeded, with no change to the script",
        description="Run CMD with PYTHONHASHSEED, TORCHREPRO_SEED and the cuBLAS setting in "
        "place before Python starts, and seed_everything applied before the script runs.",
    )
    parser.add_argument(
        "--seed",
        type=_seed_option,
        default=None,
        help="root seed: an int in [0, 2**64) or a string (default: "
        "TORCHREPRO_SEED, else a fresh seed, printed)",
    )
    _add_determinism_options(parser)
    _add_take_over_option(parser)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    parser.set_defaults(handler=_run)


def _cost(args: argparse.Namespace) -> int:
    from torchrepro.cost import cost_from_spec

    print(cost_from_spec(args.spec, steps=args.steps, device=args.device).render())
    return 0


def _add_cost(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "cost",
        help="time training steps under each determinism setting",
        description="Time a few training steps under PyTorch's defaults, the recipe flags, "
        "PyTorch's strict deterministic mode and torchrepro's, and say which setting the "
        "model needs to repeat bitwise.",
    )
    parser.add_argument(
        "spec",
        nargs="?",
        default=None,
        help="module:function returning (model, batch, loss_fn); default: a built-in CNN "
        "with index_add_, bilinear upsampling and adaptive pooling",
    )
    parser.add_argument("--steps", type=int, default=5, help="steps timed per setting")
    parser.add_argument("--device", default="cpu", help="device of the built-in model")
    parser.set_defaults(handler=_cost)


def _env(args: argparse.Namespace) -> int:
    from torchrepro.env import environment, format_environment

    manifest = environment()
    import json

    print(json.dumps(manifest, indent=2) if args.json else format_environment(manifest))
    return 0


def _add_env(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("env", help="print the environment manifest records embed")
    p.add_argument("--json", action="store_true", help="print JSON instead of aligned text")
    p.set_defaults(handler=_env)


def _diff(args: argparse.Namespace) -> int:
    from torchrepro.compare import diff_records

    result = diff_records(args.a, args.b, rtol=args.rtol, atol=args.atol)
    import json

    print(json.dumps(result.to_json(), indent=2) if args.json else result.render())
    if not result.comparable:
        return ExitCode.USAGE
    return ExitCode.OK if result.identical or result.within_tolerance else ExitCode.FINDING


def _add_diff(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "diff",
        help="compare two run records: environment, then the first diverging step",
        description="Exit 0 if identical (or within --rtol/--atol), 1 if they diverge, 2 if "
        "they cannot be compared.",
    )
    p.add_argument("a", help="first record (JSON lines written by torchrepro.record)")
    p.add_argument("b", help="second record")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    for name in ("rtol", "atol"):
        p.add_argument(
            f"--{name}",
            type=float,
            default=None,
            help=f"compare within atol + rtol * |b| instead of bitwise ({name}; default 0 "
            "when the other is given): parameters and gradients by their sizes, logged "
            "numbers as numbers; exit 0 when within tolerance",
        )
    p.set_defaults(handler=_diff)


def _check(args: argparse.Namespace) -> int:
    from torchrepro.check import check_command
    from torchrepro.check.orchestrate import check_output_path

    if args.json is not None:
        check_output_path(args.json, "--json")  # before the runs, not after them

    tty = sys.stderr.isatty()
    shown = 0  # the width of the progress line on the terminal, 0 before the first

    def progress(text: str) -> None:
        # One line, rewritten in place on a terminal; nothing in a log file.
        nonlocal shown
        if tty:
            print(f"\r{text.ljust(shown)}", end="", file=sys.stderr, flush=True)
            shown = max(shown, len(text))

    print(
        f"torchrepro check: {args.runs} runs, "
        f"{'one after another' if args.sequential else 'side by side'} ...",
        file=sys.stderr,
    )
    report = None
    try:
        report = check_command(
            _command(args),
            runs=args.runs,
            max_steps=args.max_steps,
            seed=args.seed,
            deterministic=args.deterministic,
            lockstep=not args.sequential,
            no_seed=args.no_seed,
            take_over=args.take_over,
            timeout=args.timeout,
            workdir=args.workdir,
            progress=progress,
            plot=args.plot,
            resume_at=args.resume_at,
        )
    except KeyboardInterrupt:
        pass
    finally:
        if shown:  # end the progress line, whatever comes next
            print(file=sys.stderr)
    if report is None:
        print("torchrepro check: interrupted; every run was stopped", file=sys.stderr)
        return ExitCode.INTERRUPTED
    print(report.render())
    if args.json is not None:
        _write_json(args.json, report.to_json())
    return report.exit_code


def _add_check(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check",
        help="run a training twice and say whether it is bitwise identical",
        description="Run CMD several times as separate processes under torchrepro seeding "
        "and the recorder, compare every optimizer step, and say 'bitwise identical' or "
        "where and why the runs part. Exit 0 identical, 1 diverged, 2 usage error, "
        "3 a run failed.",
    )
    parser.add_argument("--runs", type=int, default=2, help="number of runs (default 2)")
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        metavar="K",
        help="stop the runs after K optimizer steps",
    )
    parser.add_argument(
        "--seed",
        type=_seed_option,
        default=None,
        help="root seed for every run (default: TORCHREPRO_SEED, else fresh)",
    )
    _add_determinism_options(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--lockstep",
        dest="sequential",
        action="store_false",
        help="run side by side, stop at the first divergence (default)",
    )
    mode.add_argument(
        "--sequential", dest="sequential", action="store_true", help="run one after another"
    )
    parser.add_argument(
        "--resume-at",
        type=int,
        default=None,
        metavar="K",
        help="compare an uninterrupted run with one stopped after step K and resumed (the "
        "script honours TORCHREPRO_STOP_AT, TORCHREPRO_RESUME, TORCHREPRO_CHECKPOINT_DIR)",
    )
    parser.add_argument(
        "--no-seed",
        action="store_true",
        help="record only, without torchrepro seeding: check the script as is",
    )
    _add_take_over_option(parser)
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="fail a run that takes longer than this",
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="write the full report")
    parser.add_argument(
        "--plot",
        default=None,
        metavar="FILE.png",
        help="plot differing values per step (runs go on after divergence)",
    )
    parser.add_argument(
        "--workdir",
        default=None,
        metavar="DIR",
        help="keep records, traces and run logs here (default: a temp folder)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    parser.set_defaults(handler=_check, sequential=False)


def _positive_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1; got {text!r}")
    return value


def _demo(args: argparse.Namespace) -> int:
    from torchrepro.demo import DemoRunError, Scale, run_demo

    try:
        report = run_demo(Scale.of(args.quick, args.epochs), args.out)  # a str or a Path
    except DemoRunError as error:
        print(f"torchrepro demo: {error}", file=sys.stderr)
        return error.exit_code
    print(report.render())
    # A finding is torchrepro's own setup failing to repeat; the other setups are the
    # problem being shown, not a finding.
    if report.check is not None and report.check.exit_code != 0:
        return report.check.exit_code
    return ExitCode.OK if report.setup("torchrepro").identical else ExitCode.FINDING


def _add_demo(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train one small CNN unseeded, with the common recipe and with torchrepro",
        description="Train a small CNN on generated shape images (random augmentation, "
        "2 DataLoader workers) with no seeding, with the common recipe and with torchrepro, "
        "twice each in fresh processes; print accuracy, loss, their spread, bitwise "
        "identity and worker-stream distinctness, and plot the accuracy curves.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a much shorter run (fewer images and epochs)"
    )
    parser.add_argument(
        "--epochs", type=_positive_int, default=None, help="epochs per run (default: 8, quick: 2)"
    )
    parser.add_argument(
        "--out",
        default=".",
        help="directory for the accuracy plot torchrepro-demo.png (default: current directory)",
    )
    parser.set_defaults(handler=_demo)


def _doctor(args: argparse.Namespace) -> int:
    from torchrepro.doctor import run_doctor

    if args.json is not None:
        from torchrepro.check.orchestrate import check_output_path

        check_output_path(args.json, "--json")  # before measuring, not after
    report = run_doctor(
        args.device,
        quick=args.quick,
        only=args.only,
        probes=args.probe,
        model=args.model,
        self_test=args.self_test,
        time_limit=args.time_limit,
        repeats=args.repeats,
        progress=lambda text: print(text, file=sys.stderr, flush=True),
    )
    print(report.render())
    if args.json is not None:
        _write_json(args.json, report.to_json())
    return report.exit_code


def _add_doctor(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="measure which ops repeat on this machine, and what determinism costs here",
        description="Run each probe op (matmul, conv, scatter/index ops, pooling, "
        "interpolation, losses, attention, ...) under PyTorch's defaults, the common recipe, "
        "PyTorch strict and torchrepro's deterministic mode, several times in one process and "
        "once more in a second; self-test torchrepro on the device; recommend the cheapest "
        "level under which everything repeated. Exit 0 when a level made every probe (that "
        "the model uses) repeat and the self-tests passed, 1 when not, 2 usage error, 3 a "
        "measuring process failed.",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:N or mps (default: CUDA, else MPS, else CPU)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller shapes, 3 calls per op (under a minute)"
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="write the full report")
    parser.add_argument(
        "--model",
        default=None,
        metavar="MODULE:FUNCTION",
        help="a function returning (model, batch, loss_fn), as for `torchrepro cost`: only the "
        "probes its training step uses count, and the cost is that of its step",
    )
    parser.add_argument(
        "--probe",
        action="append",
        default=[],
        metavar="MODULE:FUNCTION",
        help="add probes of your own (a function returning torchrepro.doctor.Probe objects)",
    )
    parser.add_argument(
        "--only", action="append", default=[], metavar="PROBE", help="run only this probe"
    )
    parser.add_argument(
        "--no-self-test", dest="self_test", action="store_false", help="skip the self-tests"
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="hard limit for the whole run (default 60 with --quick, else 300); what is not "
        "measured by then is reported as such",
    )
    parser.add_argument(
        "--repeats", type=_positive_int, default=None, help="calls per op after the first"
    )
    parser.set_defaults(handler=_doctor)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``torchrepro`` command."""
    parser = argparse.ArgumentParser(
        prog="torchrepro",
        description="PyTorch training that gives the same result every time, and proof of it.",
    )
    subparsers = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    _add_run(subparsers)
    _add_check(subparsers)
    _add_cost(subparsers)
    _add_env(subparsers)
    _add_diff(subparsers)
    _add_doctor(subparsers)

    _add_demo(subparsers)
    return parser


# What a shell reports for a command killed by SIGPIPE (128 + 13), as `yes | head` does.
_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``torchrepro`` command; returns its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        return int(args.handler(args))
    except SystemExit as exit_:
        if isinstance(exit_.code, str):
            print(exit_.code, file=sys.stderr)
            return ExitCode.USAGE
        return int(exit_.code or 0)
    except TorchReproError as error:
        print(f"torchrepro {args.verb}: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"torchrepro {args.verb}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`torchrepro cost | head`): no bug, and no finding either.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _BROKEN_PIPE
    except Exception:  # noqa: BLE001 - a bug of ours is no finding: never exit 1
        import traceback

        traceback.print_exc()
        print(
            f"torchrepro {args.verb}: internal error (above): this is a bug in torchrepro. "
            "Please report it with the traceback and the command line.",
            file=sys.stderr,
        )
        return ExitCode.RUN_FAILED
