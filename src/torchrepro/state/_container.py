"""Sealed states: plain data with a format, a schema version and a SHA-256 checksum.

Every state torchrepro saves (:mod:`torchrepro.state`) is a dict of plain data (tensors,
ints, floats, strs, lists and dicts) sealed here; opening one checks format, version and
checksum before anything reads its content. The files that hold them: :mod:`._archive`.

Examples:
    >>> sealed = seal({"format": "example", "version": SCHEMA_VERSION, "x": [1, 2]})
    >>> open_sealed(sealed, "example")["x"]
    [1, 2]
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch

from torchrepro.errors import StateError

SCHEMA_VERSION = 1
"""The version written into every saved state; this torchrepro reads exactly this one."""


_MAX_DEPTH = 64
"""How deeply a saved state may nest: torchrepro's own nest a few levels."""


def _feed(digest: Any, value: Any, where: str, depth: int = 0) -> None:
    """Hashes plain data canonically; anything that is not plain data is refused.

    A state nested deeper than :data:`_MAX_DEPTH` (one that contains itself, say) is
    refused too, not a RecursionError.
    """
    if depth > _MAX_DEPTH:
        raise StateError(
            f"{where[:200]}: nested more than {_MAX_DEPTH} levels deep (or it contains "
            "itself); expected a state torchrepro wrote. The state was altered after it."
        )
    if isinstance(value, Mapping):
        digest.update(b"d%d;" % len(value))
        for key in sorted(value, key=str):
            if not isinstance(key, str):
                raise StateError(f"{where}: keys must be strs; got {key!r}.")
            _feed(digest, key, where, depth + 1)
            _feed(digest, value[key], f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        digest.update(b"l%d;" % len(value))
        for position, item in enumerate(value):
            _feed(digest, item, f"{where}[{position}]", depth + 1)
    elif isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"t{flat.dtype};{list(value.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, bool):
        raise StateError(f"{where}: expected plain data; got a bool.")
    elif isinstance(value, int):
        digest.update(b"i%d;" % value)
    elif isinstance(value, float):
        digest.update(b"f" + value.hex().encode() + b";")
    elif isinstance(value, str):
        encoded = value.encode("utf-8")
        digest.update(b"s%d;" % len(encoded) + encoded)
    else:
        raise StateError(
            f"{where}: expected tensors, ints, floats, strs, lists or dicts; "
            f"got {type(value).__name__}. The state was altered after torchrepro wrote it."
        )


def checksum(body: Mapping[str, Any]) -> str:
    digest = hashlib.sha256()
    _feed(digest, {key: value for key, value in body.items() if key != "checksum"}, "state")
    return "sha256:" + digest.hexdigest()


def seal(body: dict[str, Any]) -> dict[str, Any]:
    body["checksum"] = checksum(body)
    return body


def open_sealed(state: object, expected_format: str) -> Mapping[str, Any]:
    """Checks the format, schema version and checksum of a saved state; returns it."""
    if not isinstance(state, Mapping):
        raise StateError(
            f"expected a {expected_format} state dict; got {type(state).__name__}. Pass the "
            f"value returned by state_dict(), as loaded from your checkpoint."
        )
    got_format = state.get("format")
    if got_format != expected_format:
        raise StateError(
            f"expected a {expected_format} state dict; got format {got_format!r}. Pass the "
            f"value returned by the matching torchrepro function."
        )
    version = state.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StateError(
            f"{expected_format} state has unknown schema version {version!r}; expected "
            f"{SCHEMA_VERSION}. The state is damaged or was not written by torchrepro."
        )
    if version != SCHEMA_VERSION:
        raise StateError(
            f"{expected_format} state has schema version {version}; this torchrepro reads "
            f"version {SCHEMA_VERSION}. Load it with the torchrepro version that wrote it "
            "(upgrade torchrepro if it is newer)."
        )
    saved = state.get("checksum")
    actual = checksum(state)
    if saved != actual:
        raise StateError(
            f"{expected_format} state fails its checksum (saved {saved!r}, content hashes to "
            f"{actual!r}): it was damaged or edited. Restore from another checkpoint."
        )
    return state
