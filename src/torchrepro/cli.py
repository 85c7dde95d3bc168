"""Command line: ``torchrepro <verb>``. Argument parsing only; every verb calls the library.

Exit codes: 0 success, 1 a finding (records diverged), 2 usage error (bad arguments,
unreadable or incomparable records), 3 a run failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from torchrepro.errors import TorchReproError

EXIT_OK, EXIT_FINDING, EXIT_USAGE, EXIT_RUN_FAILED = 0, 1, 2, 3


def _env(args: argparse.Namespace) -> int:
    from torchrepro.env import environment, format_environment

    manifest = environment()
    print(json.dumps(manifest, indent=2) if args.json else format_environment(manifest))
    return EXIT_OK


def _add_env(subparsers: Any) -> None:
    p = subparsers.add_parser("env", help="print the environment manifest records embed")
    p.add_argument("--json", action="store_true", help="print JSON instead of aligned text")
    p.set_defaults(func=_env)


def _diff(args: argparse.Namespace) -> int:
    from torchrepro.compare import diff_records

    result = diff_records(args.a, args.b)
    print(json.dumps(result.to_json(), indent=2) if args.json else result.render())
    if not result.comparable:
        return EXIT_USAGE
    return EXIT_OK if result.identical else EXIT_FINDING


def _add_diff(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "diff",
        help="compare two run records: environment, then the first diverging step",
        description="Exit 0 if identical, 1 if they diverge, 2 if they cannot be compared.",
    )
    p.add_argument("a", help="first record (JSON lines written by torchrepro.record)")
    p.add_argument("b", help="second record")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_diff)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchrepro", description="PyTorch training that gives the same result every time."
    )
    subparsers = parser.add_subparsers(dest="verb", required=True)
    _add_env(subparsers)
    _add_diff(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    Example:
        >>> main(["diff", "a.jsonl", "b.jsonl"])
        1
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad usage; return it instead
        return int(e.code or 0)
    try:
        code: int = args.func(args)
    except TorchReproError as e:
        print(f"torchrepro {args.verb}: {e}", file=sys.stderr)
        return EXIT_USAGE
    return code
