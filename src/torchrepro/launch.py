"""Running a user's command under torchrepro, with no change to their script.

``torchrepro run -- python train.py`` puts a ``sitecustomize`` module first on the child's
``PYTHONPATH``. Python imports it at start-up, before the user's code, in every Python
process of the command (the script, spawned DataLoader workers, torchrun's ranks), and it
calls :func:`bootstrap`, which applies ``seed_everything`` from the environment. Variables
that must be in place before an interpreter starts (``PYTHONHASHSEED``) are set in the
child's environment directly; ``CUBLAS_WORKSPACE_CONFIG`` is set by the bootstrap, before
the user's code can start CUDA. Interpreters started with ``-S`` or ``-I`` skip
``sitecustomize`` and are not seeded.

This module is the one builder of a child's environment (``run``, ``check``, the demo and
``assert_reproducible`` all go through it), and it imports neither torch nor numpy: the
launching process only starts the command.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from torchrepro import _contract, _flags
from torchrepro._derive import SeedLike, hash_seed_for, normalize_seed, resolve_root
from torchrepro.errors import RunError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at start-up
if TYPE_CHECKING:
    from typing import NoReturn

__all__ = [
    "bootstrap",
    "child_environment",
    "clean_environment",
    "exec_command",
    "resolve_root",
    "run_command",
]

BOOTSTRAP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bootstrap")


def clean_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default ``os.environ``) without anything torchrepro exported.

    Drops every ``TORCHREPRO_*`` variable of the contract and ``PYTHONHASHSEED``, so a
    command started in it runs as if torchrepro had never run in this process.

    Examples:
        >>> clean_environment({"PATH": "/bin", "TORCHREPRO_SEED": "11", "PYTHONHASHSEED": "1"})
        {'PATH': '/bin'}
    """
    dropped = {*_contract.SET_BY_TORCHREPRO, _contract.HASH_SEED}
    return {k: v for k, v in (os.environ if base is None else base).items() if k not in dropped}


def child_environment(
    seed: SeedLike,
    deterministic: bool | str | None = None,
    base: Mapping[str, str] | None = None,
    *,
    bootstrap: bool = True,
    take_over: bool | None = None,
) -> dict[str, str]:
    """The environment in which a command runs under torchrepro.

    Args:
        seed: The root seed (int in [0, 2**64) or str).
        deterministic: As for ``seed_everything``: ``None`` (recipe flags), ``True``,
            ``"warn"`` or ``False``.
        base: The environment to extend; ``os.environ`` by default.
        bootstrap: Put the start-up hook on ``PYTHONPATH`` so every Python process of the
            command seeds itself; ``False`` only exports the seed and the hash seed.
        take_over: ``True``: the script's own ``torch.manual_seed(n)`` (and numpy's,
            Python's) derive from the root seed (``TORCHREPRO_TAKE_OVER=1``); ``False``:
            they are only reported; ``None``: as ``base`` says.

    Examples:
        >>> env = child_environment(11, deterministic=True, base={})
        >>> env["TORCHREPRO_SEED"], env["PYTHONHASHSEED"], env["TORCHREPRO_DETERMINISTIC"]
        ('11', '2231009419', '1')
    """
    root = normalize_seed(seed)
    mode = None if deterministic is None else _flags.check_mode(deterministic)
    env = dict(os.environ if base is None else base)
    env[_contract.SEED] = str(root)
    env[_contract.HASH_SEED] = str(hash_seed_for(root))
    if take_over:
        env[_contract.TAKE_OVER] = "1"
    elif take_over is not None:
        env.pop(_contract.TAKE_OVER, None)
    if not bootstrap:
        return env
    env[_contract.BOOTSTRAP] = "1"
    env[_contract.DETERMINISTIC] = _flags.MODE_TEXT[mode]
    paths = [BOOTSTRAP_DIR, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def bootstrap() -> None:
    """Applies what ``torchrepro run`` or ``check`` asked for; called at interpreter start-up.

    Seeding (unless ``TORCHREPRO_NO_SEED=1``), then the step tracer (``TORCHREPRO_TRACE``)
    and the recorder (``TORCHREPRO_RECORD``); the tracer follows the recorder's steps and
    stops at the end of its step before the recorder digests the parameters. Each is
    imported only when asked for: a spawned DataLoader worker imports what seeding needs
    and nothing more.
    """
    if os.environ.get(_contract.NO_SEED) != "1":
        from torchrepro import takeover
        from torchrepro.seeding import seed_everything

        mode = _flags.mode_from_text(os.environ.get(_contract.DETERMINISTIC, ""))
        seed_everything(None, deterministic=mode)  # take-over from TORCHREPRO_TAKE_OVER
        # The script never asked for torchrepro's loader seeding: if it seeds itself, its
        # loaders follow its seeding, as they do when it runs plain.
        takeover.release_loaders_on_reseed()
    tracer = None
    if os.environ.get(_contract.TRACE):
        from torchrepro._tracer import start_trace_from_env

        tracer = start_trace_from_env()
    if os.environ.get(_contract.RECORD):
        from torchrepro.records.recording import start_from_env

        recorder = start_from_env()
        if tracer is not None and recorder is not None:
            tracer.follow(recorder)  # the traced step is the record's entry, of any kind


def exec_command(
    command: Sequence[str],
    seed: SeedLike | None,
    deterministic: bool | str | None = None,
    take_over: bool | None = None,
) -> NoReturn:
    """Replaces this process with ``command``, run under torchrepro seeding (``torchrepro run``).

    Nothing of torchrepro stays behind: the command gets the terminal's signals itself and
    its exit status is the shell's to see, and no parent process waits beside it.

    Raises:
        RunError: The command cannot be started; this process goes on.
    """
    env = child_environment(resolve_root(seed), deterministic, take_over=take_over)
    try:
        os.execvpe(command[0], list(command), env)
    except OSError as error:
        raise RunError(
            f"cannot start {command[0]!r}: {error.strerror}; expected an executable command, "
            "e.g. `torchrepro run -- python train.py`."
        ) from None


def run_command(
    command: Sequence[str],
    seed: SeedLike | None,
    deterministic: bool | str | None = None,
    take_over: bool | None = None,
) -> int:
    """Runs ``command`` under torchrepro seeding and returns its exit status.

    A command killed by a signal returns 128 + the signal number, as shells report it.
    Ctrl-C reaches the command (same process group); this waits for it to finish.

    Args:
        command: The command and its arguments.
        seed: The root seed; ``None``: ``TORCHREPRO_SEED``, else a fresh one (logged).
        deterministic: As for :func:`child_environment`.
        take_over: As for :func:`child_environment`.

    Raises:
        RunError: The command cannot be started.

    Examples:
        >>> run_command([sys.executable, "-c", "raise SystemExit(3)"], seed=7)
        3
    """
    import subprocess

    env = child_environment(resolve_root(seed), deterministic, take_over=take_over)
    try:
        process = subprocess.Popen(list(command), env=env)
    except OSError as error:
        raise RunError(
            f"cannot start {command[0]!r}: {error.strerror}; expected an executable command, "
            "e.g. `torchrepro run -- python train.py`."
        ) from None
    while True:
        try:
            code = process.wait()
            break
        except KeyboardInterrupt:
            continue  # the command got the same Ctrl-C from the terminal; let it finish
    return 128 - code if code < 0 else code
