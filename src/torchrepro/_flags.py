"""The vocabulary of determinism settings: one name and one note per setting.

:mod:`torchrepro.determinism` reads and sets each setting under this name, the environment
manifest records it under this name (``env["determinism"][name]``), and ``diff`` and
``check`` explain a difference with its note. Nothing here imports torch, so the launching
process of ``torchrepro check`` can read records with it.

Examples:
    >>> NOTES[STRING_HASHING]
    'str hashing salted per process: set and dict-of-str order, hence data order, change per run.'
"""

from __future__ import annotations

from torchrepro.errors import DeterminismError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at start-up
if TYPE_CHECKING:
    from typing import Literal, Union

    Mode = Union[bool, Literal["warn"]]
    """``True`` (strict deterministic algorithms), ``"warn"`` (warn-only) or ``False`` (off)."""

CUDNN_DETERMINISTIC = "cudnn_deterministic"
CUDNN_BENCHMARK = "cudnn_benchmark"
DETERMINISTIC_ALGORITHMS = "deterministic_algorithms"
WARN_ONLY = "warn_only"
FILL_UNINITIALIZED_MEMORY = "fill_uninitialized_memory"
REPLACED_OPS = "replaced_ops"
TF32_MATMUL = "tf32_matmul"
TF32_CUDNN = "tf32_cudnn"
FLOAT32_MATMUL_PRECISION = "float32_matmul_precision"
STRING_HASHING = "string_hashing_randomized"

NOTES = {
    CUDNN_DETERMINISTIC: "cuDNN deterministic: picks different convolution algorithms.",
    CUDNN_BENCHMARK: "cuDNN benchmark: algorithm chosen by timing, per run.",
    DETERMINISTIC_ALGORITHMS: "deterministic algorithms on/off: kernels differ.",
    WARN_ONLY: "warn-only: nondeterministic kernels may still run.",
    FILL_UNINITIALIZED_MEMORY: "uninitialised memory filled or not: a read of it gives "
    "different values.",
    REPLACED_OPS: "torchrepro's deterministic op replacements on/off: other kernels run.",
    TF32_MATMUL: "TF32 matmul: products rounded to 10-bit mantissas.",
    TF32_CUDNN: "TF32 convolutions: products rounded to 10-bit mantissas.",
    FLOAT32_MATMUL_PRECISION: "matmul precision: TF32/bf16 internal rounding.",
    STRING_HASHING: "str hashing salted per process: set and dict-of-str order, hence data "
    "order, change per run.",
}
"""Why each setting can change a training's result, by name, in manifest order."""

NAMES = tuple(NOTES)

MODE_TEXT: dict[bool | str | None, str] = {None: "", False: "0", True: "1", "warn": "warn"}
"""A mode as text, for an environment variable (``None``: the common recipe's flags)."""


def check_mode(mode: object) -> Mode:
    """Validates a determinism mode: ``True``, ``False`` or ``"warn"``.

    Raises:
        DeterminismError: Anything else.

    Examples:
        >>> check_mode("warn")
        'warn'
    """
    if mode is True or mode is False or mode == "warn":
        return mode
    raise DeterminismError(
        f"deterministic must be True, False, None or 'warn'; got {mode!r}. "
        "Pass True for strict deterministic algorithms, 'warn' to only warn."
    )


def mode_from_text(text: str) -> Mode | None:
    """The mode a :data:`MODE_TEXT` value stands for.

    Raises:
        DeterminismError: ``text`` is not one of them.

    Examples:
        >>> mode_from_text("1")
        True
    """
    for mode, value in MODE_TEXT.items():
        if value == text:
            return None if mode is None else check_mode(mode)
    raise DeterminismError(
        f"a determinism mode must be one of {sorted(MODE_TEXT.values())}; got {text!r}. "
        "Launch through `torchrepro run` rather than setting it by hand."
    )
