"""Seed validation and derivation: the arithmetic every other module relies on.

Seeds are never added together (``seed + rank`` collides: seed 1 on rank 0 equals seed 0
on rank 1). Each derived seed is a hash of the root seed and a tuple of keys, through
numpy's ``SeedSequence``, which mixes all 64 output bits, the low 32 included (legacy
numpy and torch's CPU generator use only those).
"""

from __future__ import annotations

import hashlib
import operator

import numpy as np

from torchrepro.errors import SeedError

SeedLike = int | str
"""What users may pass as a seed: an int in [0, 2**64) or a string (hashed)."""

_SEED_LIMIT = 2**64
_WORD = 0xFFFFFFFF
_INT_TAG = 0
_STR_TAG = 1


def hash_string(text: str) -> int:
    """A 64-bit hash of ``text``, the same on every machine and Python version.

    Python's ``hash`` is salted per process; this is SHA-256 of the UTF-8 bytes.

    Example:
        >>> hash_string("abc")
        13436514500253700074
    """
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def describe(value: object) -> str:
    """A short ``repr`` and the type of ``value``, for error messages."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise SeedError(
            f"{what} must be an int in [0, 2**64) or a str; got {describe(value)}. "
            "Pass a non-negative int, or a string (it is hashed)."
        )
    number = operator.index(value)
    if not 0 <= number < _SEED_LIMIT:
        raise SeedError(
            f"{what} must be an int in [0, 2**64); got {number}. "
            "Pass a non-negative int below 2**64, or a string (it is hashed)."
        )
    return int(number)


def normalize_seed(seed: object, what: str = "seed") -> int:
    """Validates a user's seed and returns it as an int in [0, 2**64).

    Args:
        seed: An int in [0, 2**64) (numpy integers too) or a str, hashed with
            :func:`hash_string`. Anything else, bools and floats included, is refused.
        what: How to name the value in the error message.

    Raises:
        SeedError: The seed is of another type or out of range.

    Example:
        >>> normalize_seed(11)
        11
    """
    if isinstance(seed, str):
        return hash_string(seed)
    return _as_int(seed, what)


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

    Example:
        >>> derive_seed(11, "data", 0, 1)
        5091976386060140560
    """
    words = [*_words(normalize_seed(root)), len(keys)]
    for index, key in enumerate(keys):
        if isinstance(key, str):
            words += [_STR_TAG, *_words(hash_string(key))]
        else:
            words += [_INT_TAG, *_words(_as_int(key, f"key {index} of derive_seed"))]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])
