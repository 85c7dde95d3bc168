"""Seed validation and derivation: the arithmetic every other module relies on.

Seeds are never added together (``seed + rank`` collides: seed 1 on rank 0 equals seed 0
on rank 1). Each derived seed is a hash of the root seed and a tuple of keys, through
numpy's ``SeedSequence`` algorithm, which mixes all 64 output bits, the low 32 included
(legacy numpy and torch's CPU generator use only those). It is written out here in plain
Python (golden-tested against numpy's) so that the launching process of ``torchrepro run``
derives the child's hash seed without importing numpy or torch.
"""

from __future__ import annotations

import functools
import operator
import os
import sys
from typing import Any

from torchrepro import _contract
from torchrepro.errors import SeedError

SeedLike = int | str
"""What users may pass as a seed: an int in [0, 2**64) or a string (hashed)."""

_SEED_LIMIT = 2**64
_WORD = 0xFFFFFFFF
_INT_TAG = 0
_STR_TAG = 1


@functools.lru_cache(maxsize=4096)  # stream names repeat: "torch", "data", a test's id
def hash_string(text: str) -> int:
    """A 64-bit hash of ``text``, the same on every machine and Python version.

    Python's ``hash`` is salted per process; this is SHA-256 of the UTF-8 bytes.

    Examples:
        >>> hash_string("abc")
        13436514500253700074
    """
    import hashlib  # here: the launching process of `torchrepro run` rarely hashes a str

    # "surrogatepass": a str with a lone surrogate (from os.fsdecode, say) is a str too;
    # its bytes are invalid UTF-8, so they collide with no valid string's.
    data = text.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big")


def describe(value: object) -> str:
    """A short ``repr`` and the type of ``value``, for error messages.

    Examples:
        >>> describe(10**5000)
        'an int of 16610 bits (int)'
    """
    if isinstance(value, int) and value.bit_length() > 128:  # repr may refuse, or be huge
        text = f"{'a negative' if value < 0 else 'an'} int of {value.bit_length()} bits"
    else:
        try:
            text = repr(value)
        except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
            text = f"<{type(value).__name__} object>"
        if len(text) > 60:
            text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def require_bool(value: object, what: str, error: type[Exception] = SeedError) -> bool:
    """``value`` if it is a bool; an ``error`` naming ``what`` otherwise ("no" is truthy).

    Examples:
        >>> require_bool("no", "workers")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        torchrepro.errors.SeedError: workers must be True or False; got 'no' (str). ...
    """
    if not isinstance(value, bool):
        raise error(
            f"{what} must be True or False; got {describe(value)}. Pass a bool: a str "
            "such as 'no' would count as True."
        )
    return value


def require_int(value: object, what: str) -> int:
    """``value`` as an int in [0, 2**64): ints and what ``__index__`` takes, never a bool
    or a float (``int(1.5)`` would be 1); a :class:`SeedError` naming ``what`` otherwise.

    Examples:
        >>> require_int(3, "index")
        3
    """
    try:
        number = None if isinstance(value, bool) else operator.index(value)  # type: ignore[arg-type]
    except TypeError:  # no __index__, or one that refuses (a float tensor)
        number = None
    if number is None:
        raise SeedError(
            f"{what} must be an int in [0, 2**64) or a str; got {describe(value)}. "
            "Pass a non-negative int, or a string (it is hashed)."
        )
    if not 0 <= number < _SEED_LIMIT:
        raise SeedError(
            f"{what} must be an int in [0, 2**64); got {describe(number)}. "
            "Pass a non-negative int below 2**64, or a string (it is hashed)."
        )
    return int(number)


def parse_seed_text(text: str, what: str) -> int:
    """A seed written as text (an environment variable, a command-line option): ASCII digits.

    Raises:
        SeedError: Anything but 1 to 20 ASCII digits naming an int below 2**64; Python's
            ``int`` would also take ``"1_000"``, ``" 7"`` and other scripts' digits.

    Examples:
        >>> parse_seed_text("11", "TORCHREPRO_SEED")
        11
        >>> parse_seed_text("1_000", "TORCHREPRO_SEED")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        torchrepro.errors.SeedError: TORCHREPRO_SEED must be a decimal integer in [0, 2**64); ...
    """
    if not (text.isascii() and text.isdigit() and len(text) <= 20):
        raise SeedError(
            f"{what} must be a decimal integer in [0, 2**64); got {describe(text)}. "
            "Write it in the digits 0-9 only, with no sign, spaces or underscores."
        )
    return require_int(int(text), what)


def normalize_seed(seed: object, what: str = "seed") -> int:
    """Validates a user's seed and returns it as an int in [0, 2**64).

    Args:
        seed: An int in [0, 2**64) (numpy integers too) or a str, hashed with
            :func:`hash_string`. Anything else, bools and floats included, is refused.
        what: How to name the value in the error message.

    Raises:
        SeedError: The seed is of another type or out of range.

    Examples:
        >>> normalize_seed(11)
        11
    """
    if isinstance(seed, str):
        return hash_string(seed)
    return require_int(seed, what)


def _words(number: int) -> list[int]:
    return [number & _WORD, number >> 32]


def derive_seed(root: SeedLike, *keys: SeedLike) -> int:
    """A 64-bit seed derived from ``root`` and ``keys``, independent of its siblings.

    Every input is encoded at fixed width with a type tag and the key count, so
    ``derive_seed(r, 1, 2)``, ``derive_seed(r, 12)``, ``derive_seed(r, "1", 2)`` and
    ``derive_seed(r, 1, 2, 0)`` all differ.

    Args:
        root: The root seed (int in [0, 2**64) or str).
        *keys: Ints in [0, 2**64) or strs naming the stream, e.g. ``"data", rank, worker``.

    Returns:
        An int in [0, 2**64) whose low 32 bits are as well mixed as the rest.

    Raises:
        SeedError: The root or a key is not an acceptable int or str.

    Examples:
        >>> derive_seed(11, "data", 0, 1)
        5091976386060140560
    """
    words = [*_words(normalize_seed(root)), len(keys)]
    for index, key in enumerate(keys):
        if isinstance(key, str):
            words += [_STR_TAG, *_words(hash_string(key))]
        else:
            words += [_INT_TAG, *_words(require_int(key, f"key {index} of derive_seed"))]
    return _seed_sequence_uint64(words)


# numpy's SeedSequence (numpy/random/bit_generator.pyx), for 32-bit entropy words, no
# spawn key, the default pool of 4 words, and one uint64 of output.
_MASK = 0xFFFFFFFF
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R = 0xCA01F9DD, 0x4973F715
_POOL_SIZE = 4


class _HashMix:
    def __init__(self) -> None:
        self.const = _INIT_A

    def __call__(self, value: int) -> int:
        value = (value ^ self.const) & _MASK
        self.const = (self.const * _MULT_A) & _MASK
        value = (value * self.const) & _MASK
        return value ^ (value >> 16)


def _mix(x: int, y: int) -> int:
    result = (_MIX_MULT_L * x - _MIX_MULT_R * y) & _MASK
    return result ^ (result >> 16)


def _seed_sequence_uint64(entropy: list[int]) -> int:
    numpy = sys.modules.get("numpy")
    if numpy is not None:  # the same function in C, twice as fast, once numpy is loaded
        low, high = numpy.random.SeedSequence(entropy).generate_state(2, numpy.uint32)
        return int(low) | int(high) << 32
    return _seed_sequence_uint64_python(entropy)


@functools.lru_cache(maxsize=8)
def _output_constants(count: int) -> tuple[Any, Any, Any]:
    import numpy as np

    xor, mul = np.empty(count, np.uint32), np.empty(count, np.uint32)
    const = _INIT_B
    for i in range(count):
        xor[i] = const
        const = (const * _MULT_B) & _MASK
        mul[i] = const
    return np.arange(count) % _POOL_SIZE, xor, mul


def seed_sequence_words(entropy: list[int], count: int) -> Any:
    """``numpy.random.SeedSequence(entropy).generate_state(count)``: the same uint32 words,
    five times faster for a Mersenne Twister's 624 (the output constants are per position,
    not per seed, so they are computed once).

    Examples:
        >>> import numpy as np
        >>> words = seed_sequence_words([5, 7], 624)
        >>> bool((words == np.random.SeedSequence([5, 7]).generate_state(624)).all())
        True
    """
    import numpy as np

    index, xor, mul = _output_constants(count)
    words = np.random.SeedSequence(entropy).pool[index]
    np.bitwise_xor(words, xor, out=words)
    np.multiply(words, mul, out=words)
    words ^= words >> np.uint32(16)
    return words


def _seed_sequence_uint64_python(entropy: list[int]) -> int:
    hashmix = _HashMix()
    pool = [hashmix(entropy[i] if i < len(entropy) else 0) for i in range(_POOL_SIZE)]
    for src in range(_POOL_SIZE):
        for dst in range(_POOL_SIZE):
            if src != dst:
                pool[dst] = _mix(pool[dst], hashmix(pool[src]))
    for word in entropy[_POOL_SIZE:]:
        for dst in range(_POOL_SIZE):
            pool[dst] = _mix(pool[dst], hashmix(word))
    const = _INIT_B
    out = []
    for word in pool[:2]:
        value = (word ^ const) & _MASK
        const = (const * _MULT_B) & _MASK
        value = (value * const) & _MASK
        out.append(value ^ (value >> 16))
    return out[0] | out[1] << 32


def hash_seed_for(root: int) -> int:
    """The ``PYTHONHASHSEED`` torchrepro uses for a root seed (Python takes [0, 2**32)).

    Examples:
        >>> hash_seed_for(11)
        2231009419
    """
    return derive_seed(root, "pythonhash") % 2**32


def root_seed_from_env() -> int:
    """The root seed exported by ``seed_everything`` or ``torchrepro run``.

    Raises:
        SeedError: No seed is set, or ``TORCHREPRO_SEED`` is not an integer.

    Examples:
        >>> os.environ["TORCHREPRO_SEED"] = "11"
        >>> root_seed_from_env()
        11
    """
    text = os.environ.get(_contract.SEED)
    if text is None:
        raise SeedError(
            f"no root seed: {_contract.SEED} is not set. "
            "Call torchrepro.seed_everything(seed) first, or pass seed= explicitly."
        )
    return parse_seed_text(text, _contract.SEED)


def fresh_seed() -> int:
    """A new 32-bit seed (easy to copy), logged once with how to repeat the run."""
    import logging
    import secrets  # here, not at the top: hmac's import costs every start-up otherwise

    fresh = secrets.randbelow(2**32)
    logging.getLogger("torchrepro").warning(
        "torchrepro: no seed given; using seed %d. Repeat this run with "
        "seed_everything(%d) or %s=%d.",
        fresh,
        fresh,
        _contract.SEED,
        fresh,
    )
    return fresh


def resolve_root(seed: SeedLike | None) -> int:
    """The root seed of one process: ``seed``, else ``TORCHREPRO_SEED``, else a fresh one.

    Examples:
        >>> resolve_root("experiment-1") == resolve_root("experiment-1")
        True
    """
    if seed is not None:
        return normalize_seed(seed)
    if os.environ.get(_contract.SEED) is not None:
        return root_seed_from_env()
    return fresh_seed()
