"""Every environment variable torchrepro sets or reads: its name, who sets it, who reads it.

This module is the one owner of those facts; everything else imports the names from here.
A variable is *inherited* when it holds for a whole command and every process it starts
(the root seed, the determinism mode), and *per-run* when ``torchrepro check`` gives each of
its runs its own value (the record file, the run's number, its resume instructions): a
per-run variable never counts as an environment difference between two runs, and never
leaks from one command into the next one it starts.

Nothing here imports torch: the launching process of ``torchrepro run`` and ``check``
reads this table too.

Examples:
    >>> VARIABLES[SEED].read_by
    'seed_everything, DataLoader workers, the environment manifest'
    >>> sorted(name for name, v in VARIABLES.items() if v.per_run)[:2]
    ['TORCHREPRO_CHECKPOINT_DIR', 'TORCHREPRO_RECORD']
"""

from __future__ import annotations

from collections.abc import Mapping


class Variable:
    """One environment variable of the contract.

    Attributes:
        name: The variable's name.
        set_by: Who sets it.
        read_by: Who reads it.
        per_run: ``True`` when each run of ``torchrepro check`` gets its own value.
        meaning: What its value means.
    """

    __slots__ = ("meaning", "name", "per_run", "read_by", "set_by")

    def __init__(self, name: str, set_by: str, read_by: str, per_run: bool, meaning: str) -> None:
        self.name, self.set_by, self.read_by = name, set_by, read_by
        self.per_run, self.meaning = per_run, meaning

    def __repr__(self) -> str:
        return f"Variable({self.name!r}, per_run={self.per_run})"


SEED = "TORCHREPRO_SEED"
BOOTSTRAP = "TORCHREPRO_BOOTSTRAP"
DETERMINISTIC = "TORCHREPRO_DETERMINISTIC"
NO_SEED = "TORCHREPRO_NO_SEED"
TAKE_OVER = "TORCHREPRO_TAKE_OVER"
RECORD = "TORCHREPRO_RECORD"
RECORD_WITH = "TORCHREPRO_RECORD_WITH"
RECORD_ALGORITHM = "TORCHREPRO_RECORD_ALGORITHM"
REPLICA_EVERY = "TORCHREPRO_REPLICA_EVERY"
TRACE = "TORCHREPRO_TRACE"
TRACE_STEP = "TORCHREPRO_TRACE_STEP"
TRACE_ARGV = "TORCHREPRO_TRACE_ARGV"
RUN_INDEX = "TORCHREPRO_RUN"
STOP_AT = "TORCHREPRO_STOP_AT"
RESUME = "TORCHREPRO_RESUME"
CHECKPOINT_DIR = "TORCHREPRO_CHECKPOINT_DIR"
HASH_SEED = "PYTHONHASHSEED"
CUBLAS = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_VALUE = ":4096:8"
FLASH_ATTENTION = "FLASH_ATTENTION_DETERMINISTIC"
# torchrun's variables: read, never set.
RANK = "RANK"
WORLD_SIZE = "WORLD_SIZE"
LOCAL_RANK = "LOCAL_RANK"

_CHECK = "torchrepro check"
_LAUNCH = "torchrepro run and check (the child's environment)"
_VARIABLES = (
    Variable(
        SEED,
        "seed_everything, torchrepro run and check, the pytest plugin",
        "seed_everything, DataLoader workers, the environment manifest",
        False,
        "the root seed, an int in [0, 2**64)",
    ),
    Variable(BOOTSTRAP, _LAUNCH, "the sitecustomize bootstrap", False, "1: set up torchrepro"),
    Variable(
        DETERMINISTIC, _LAUNCH, "the bootstrap", False, "'' recipe flags, 1 strict, warn, 0 none"
    ),
    Variable(NO_SEED, f"{_CHECK} --no-seed", "the bootstrap", False, "1: record without seeding"),
    Variable(
        TAKE_OVER,
        f"{_LAUNCH}: --take-over",
        "seed_everything (take_over=None), so the bootstrap",
        False,
        "1: the script's own seeding derives from the root seed; 0 or unset: it is reported",
    ),
    Variable(RECORD, _CHECK, "the bootstrap's recorder", True, "the record file of this run"),
    Variable(RECORD_WITH, _CHECK, "the bootstrap's recorder", False, "comma list: grads,batch,rng"),
    Variable(RECORD_ALGORITHM, "the user", "the bootstrap's recorder", False, "digest algorithm"),
    Variable(
        REPLICA_EVERY, f"the user; {_CHECK} (1)", "the replica check", False, "every N steps; 0 off"
    ),
    Variable(TRACE, f"{_CHECK} (replays)", "the bootstrap's op tracer", True, "the trace file"),
    Variable(TRACE_STEP, f"{_CHECK} (replays)", "the op tracer", True, "the step to trace"),
    Variable(
        TRACE_ARGV,
        f"{_CHECK} (replays)",
        "the bootstrap's op tracer",
        True,
        "JSON list: the command line of the one process to trace",
    ),
    Variable(RUN_INDEX, _CHECK, "the user's script, if it wants", True, "the run's number, 1..N"),
    Variable(STOP_AT, f"{_CHECK} --resume-at", "the user's script", True, "stop after this step"),
    Variable(RESUME, f"{_CHECK} --resume-at", "the user's script", True, "1: resume"),
    Variable(
        CHECKPOINT_DIR, f"{_CHECK} --resume-at", "the user's script", True, "checkpoint folder"
    ),
    Variable(
        HASH_SEED,
        "torchrepro run and check; seed_everything (for child processes)",
        "the Python interpreter, at start-up",
        False,
        "the str hash seed",
    ),
    Variable(
        CUBLAS,
        "enable_determinism, torchrepro run (deterministic)",
        "cuBLAS, when it creates its handle",
        False,
        f"{CUBLAS_VALUE}: deterministic cuBLAS workspaces",
    ),
    Variable(
        FLASH_ATTENTION, "enable_determinism", "the flash-attn package", False, "1: deterministic"
    ),
)
VARIABLES: Mapping[str, Variable] = {v.name: v for v in _VARIABLES}

PER_RUN = tuple(v.name for v in _VARIABLES if v.per_run)
"""What ``torchrepro check`` sets for each run: never an environment difference."""

SET_BY_TORCHREPRO = tuple(v.name for v in _VARIABLES if v.name.startswith("TORCHREPRO_"))
"""Every ``TORCHREPRO_*`` variable: a command started afresh (the demo's runs) drops them."""

MANAGED = (SEED, HASH_SEED, CUBLAS, FLASH_ATTENTION)
"""What seeding and determinism change in this process; isolation and restore cover these."""
