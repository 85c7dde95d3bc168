"""Running a user's command under torchrepro, with no change to their script.

``torchrepro run -- python train.py`` puts a ``sitecustomize`` module first on the child's
``PYTHONPATH``. Python imports it at start-up, before the user's code, in every Python
process of the command (the script, spawned DataLoader workers, torchrun's ranks), and it
calls :func:`bootstrap`, which applies ``seed_everything`` from the environment. Variables
that must be in place before an interpreter starts (``PYTHONHASHSEED``) or before CUDA
starts (``CUBLAS_WORKSPACE_CONFIG``) are set in the child's environment directly.
Interpreters started with ``-S`` or ``-I`` skip ``sitecustomize`` and are not seeded.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from torchrepro import determinism
from torchrepro._derive import SeedLike, normalize_seed
from torchrepro.errors import TorchReproError
from torchrepro.seeding import SEED_ENV, hash_seed_for, seed_everything

BOOTSTRAP_ENV = "TORCHREPRO_BOOTSTRAP"
DETERMINISTIC_ENV = "TORCHREPRO_DETERMINISTIC"
NO_SEED_ENV = "TORCHREPRO_NO_SEED"
BOOTSTRAP_DIR = Path(__file__).resolve().parent / "_bootstrap"

_MODE_TEXT: dict[bool | str | None, str] = {None: "", False: "0", True: "1", "warn": "warn"}
_TEXT_MODE = {text: mode for mode, text in _MODE_TEXT.items()}


def child_environment(
    seed: SeedLike,
    deterministic: bool | str | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment in which a command runs under torchrepro.

    Args:
        seed: The root seed (int in [0, 2**64) or str).
        deterministic: As for ``seed_everything``: ``None`` (recipe flags), ``True``,
            ``"warn"`` or ``False``.
        base: The environment to extend; ``os.environ`` by default.

    Example:
        >>> env = child_environment(11, deterministic=True)
        >>> env["TORCHREPRO_SEED"]
        '11'
    """
    root = normalize_seed(seed)
    mode = None if deterministic is None else determinism.check_mode(deterministic)
    env = dict(os.environ if base is None else base)
    env[SEED_ENV] = str(root)
    env[determinism.HASH_SEED_ENV] = str(hash_seed_for(root))
    env[BOOTSTRAP_ENV] = "1"
    env[DETERMINISTIC_ENV] = _MODE_TEXT[mode]
    if mode and determinism.cublas_needs_workspace_config():
        env.setdefault(determinism.CUBLAS_ENV, determinism.CUBLAS_VALUE)
    paths = [str(BOOTSTRAP_DIR), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def bootstrap() -> None:
    """Applies what ``torchrepro run`` or ``check`` asked for; called at interpreter start-up.

    Seeding (unless ``TORCHREPRO_NO_SEED=1``), then the step tracer (``TORCHREPRO_TRACE``)
    and the recorder (``TORCHREPRO_RECORD``), in that order so that the tracer stops at the
    end of its step before the recorder digests the parameters.
    """
    from torchrepro._tracer import start_trace_from_env
    from torchrepro.records.writer import start_from_env

    if os.environ.get(NO_SEED_ENV) != "1":
        text = os.environ.get(DETERMINISTIC_ENV, "")
        seed_everything(None, deterministic=_TEXT_MODE.get(text, text))
    start_trace_from_env()
    start_from_env()


def run_command(
    command: Sequence[str], seed: SeedLike, deterministic: bool | str | None = None
) -> int:
    """Runs ``command`` under torchrepro seeding and returns its exit status.

    A command killed by a signal returns 128 + the signal number, as shells report it.
    Ctrl-C reaches the command (same process group); this waits for it to finish.
    """
    env = child_environment(seed, deterministic)
    try:
        process = subprocess.Popen(list(command), env=env)
    except OSError as error:
        raise TorchReproError(
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
