"""The run record format: its layout, schema version, rank-file names, and reading it back.

A record is a file of JSON lines, append-only, schema version :data:`SCHEMA_VERSION`:

* line 1, the header, written at the first step (no step, no file) so that its
  environment manifest shows what the script set up (threads, flags):
  ``{"format": "torchrepro-record", "schema_version": 3, "created": "...", "rank": 0,
  "world_size": 1, "argv": ["python", "train.py"], "pid": 4242, "started": 1765.2e6,
  "options": {...}, "env": {...environment manifest...}}``; ``argv`` (the command line
  of the process), ``pid`` and ``started`` (when the process started, in seconds since
  the epoch) tell the training processes of one command apart
  (:func:`~torchrepro.records.files.this_process`)
* then one entry per training step (an optimizer step, else a backward pass followed by a
  hand-written update, or a ``torchrepro.step()`` call: :mod:`torchrepro.records.writer`;
  ``"optimizer"`` is the optimizer's index, ``null`` for a step no optimizer made):
  ``{"step": 0, "optimizer": 0, "algorithm": "xxh3_128",
  "params": {"fc.weight": "<32 hex>", ...}, "grads": {...},
  "batch": [{"batch[\"input_ids\"] 16x16 int64": "<32 hex>", ...}, ...],
  "rng": {"python": ..., "numpy": ..., "torch": ..., "generator:aug": ...},
  "log": {"loss": 0.69}}`` (the optional sections only when switched on or used), and
  under DDP, at the steps where the replicas were compared, ``"replicas": {"step": 0,
  "checked": 4, "drifting": [[1, "fc.weight"]]}`` (see :mod:`torchrepro.distributed`).
  ``rng`` holds one digest per RNG source of :mod:`torchrepro._sources` in use, by name.
  ``batch`` holds one object per batch the step trained on (one per micro-batch), in order:
  what the data pipeline yielded (:mod:`torchrepro.records._batches`), each tensor's digest
  under its label, ``batch``, its path in the batch, its shape and dtype
  (``batch[1] 32 int64``, ``batch 8x4 float32`` for a bare tensor). ``stats`` holds
  the sizes of the parameters and gradients, in their order (``{"params": [[sum |x|, L2,
  max |x|], ...], "grads": ...}``, ``null`` for a tensor not measured:
  :mod:`torchrepro.records._stats`).

Each line is written and flushed as its step ends, so a crash loses at most the step in
flight; :func:`read_record` reads a record cut mid-line back to its last complete entry.
With several ranks each writes its own file, and every training process of a command
that ``torchrepro check`` runs claims one of its own (:mod:`torchrepro.records.files`:
``run1.jsonl``, ``run1.p1.jsonl``, ..., ``run1.rank0.jsonl`` for torchrun's ranks). Nothing
here imports torch: the launching process of
``torchrepro check`` reads records with it.

Examples:
    >>> model = torch.nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> with torchrepro.record("run.jsonl"):
    ...     for _ in range(2):
    ...         opt.zero_grad(); model(torch.ones(1, 2)).sum().backward(); opt.step()
    >>> rec = read_record("run.jsonl")
    >>> rec.header["schema_version"], [entry["step"] for entry in rec.entries]
    (3, [0, 1])
    >>> list(entry_values(rec.entries[0]))
    ['params.weight', 'params.bias']
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchrepro.errors import RecordError
from torchrepro.records.files import read_incomplete

__all__ = [
    "FORMAT",
    "SCHEMA_VERSION",
    "SECTIONS",
    "Record",
    "causal_rank",
    "entry_values",
    "header",
    "parse_entry",
    "parse_header",
    "read_record",
    "entry_stats",
    "section_of",
]

FORMAT = "torchrepro-record"
# Bump when the entry layout or any digest algorithm changes: old records stay readable
# only by the version that wrote them, and diff refuses to compare across versions.
# 2: "rng" digests every source of the RNG table (MPS, XPU, registered generators), by
# source name, from its plain-data state.
# 3: "batch" holds what the data pipeline yielded, by label (structure path, shape, dtype).
# "stats" holds the sizes of params and grads.
SCHEMA_VERSION = 3

# Keys of an entry.
STEP = "step"
OPTIMIZER = "optimizer"
ALGORITHM = "algorithm"
REPLICAS = "replicas"
BATCH = "batch"
RNG = "rng"
LOG = "log"
GRADS = "grads"
PARAMS = "params"
STATS = "stats"
"""Not compared (the digests are): the sizes of params and grads, for how far apart runs
are (:mod:`torchrepro.records._stats`)."""
SECTIONS = (BATCH, RNG, LOG, GRADS, PARAMS)
"""The recorded sections in causal order: the batch goes in, random draws, the loss is
logged, gradients are computed, the parameters updated. A difference that appears in an
earlier section is the likelier cause of one in a later section."""
STEPS = "steps"
"""The pseudo-section of a difference in the entries themselves (step or optimizer order,
or the number of steps): it comes before every section."""
RANKS = "ranks"
"""The key under which a run of several ranks merges the ranks' entries of one step."""
OPTIONS = (GRADS, BATCH, RNG)
"""The optional sections a recording can switch on (``record(grads=True, ...)``)."""


def header(
    *,
    rank: int,
    world_size: int,
    options: dict[str, Any],
    env: dict[str, Any],
    created: str,
    process: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The header line of a record written by rank ``rank`` of ``world_size``.

    ``process`` is :func:`~torchrepro.records.files.this_process` of the writer (its command
    line, pid, start time).

    Examples:
        >>> line = header(rank=0, world_size=1, options={}, env={}, created="now",
        ...               process={"argv": ["python", "a.py"], "pid": 7, "started": 0.0})
        >>> line["format"], line["argv"]
        ('torchrepro-record', ['python', 'a.py'])
    """
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "created": created,
        "rank": rank,
        "world_size": world_size,
        **(process or {}),
        "options": options,
        "env": env,
    }


def section_of(key: str) -> str:
    """The section of a value's key: ``"params.fc.weight"`` -> ``"params"``.

    Examples:
        >>> section_of("batch[1] (32 int64)"), section_of("log.loss"), section_of(STEPS)
        ('batch', 'log', 'steps')
    """
    return re.split(r"[.\[ ]", key, maxsplit=1)[0]


def causal_rank(section: str) -> int:
    """Where a section comes in causal order (``steps`` first; unknown sections last).

    Examples:
        >>> sorted(["params", "batch", "grads"], key=causal_rank)
        ['batch', 'grads', 'params']
    """
    order = (STEPS, *SECTIONS)
    return order.index(section) if section in order else len(order)


def entry_values(entry: dict[str, Any]) -> dict[str, Any]:
    """Everything comparable in an entry, as ``section.name -> value``, in causal order.

    Batch digests are keyed by their label with the batch's place in the step:
    ``batch[0]["input_ids"] 16x16 int64`` (a tensor of the step's first batch); logged
    numbers are kept as exact JSON text.

    Examples:
        >>> entry_values({"step": 0, "params": {"w": "ab"}, "log": {"loss": 0.5}})
        {'log.loss': '0.5', 'params.w': 'ab'}
        >>> list(entry_values({"step": 0, "batch": [{"batch[1] 32 int64": "cd"}]}))
        ['batch[0][1] 32 int64']
    """
    out: dict[str, Any] = {}
    for i, batch in enumerate(entry.get(BATCH, [])):
        for label, digest in batch.items():
            out[f"{BATCH}[{i}]{label[len(BATCH) :]}"] = digest
    for section in SECTIONS[1:]:
        for name, value in entry.get(section, {}).items():
            # json.dumps keeps the float exact and tells NaN apart from a missing value.
            out[f"{section}.{name}"] = value if isinstance(value, str) else json.dumps(value)
    return out


def entry_stats(entry: dict[str, Any]) -> dict[str, list[float]]:
    """The sizes in an entry, as ``section.name -> [sum |x|, L2, max |x|]``, where recorded.

    Keyed as :func:`entry_values` keys the digests they sit beside.

    Examples:
        >>> entry_stats({"step": 0, "params": {"w": "ab", "n": "cd"},
        ...              "stats": {"params": [[7.0, 5.0, 4.0], None]}})
        {'params.w': [7.0, 5.0, 4.0]}
    """
    found: dict[str, list[float]] = {}
    for section, sizes in (entry.get(STATS) or {}).items():
        for name, size in zip(entry.get(section, {}), sizes):
            if size is not None:
                found[f"{section}.{name}"] = size
    return found


def parse_header(line: str, path: str | os.PathLike[str]) -> dict[str, Any]:
    """The header of the record at ``path`` from its first line, checked.

    Raises:
        RecordError: if the line is not a torchrepro record header, or of another schema
            version than this library's.

    Examples:
        >>> old = '{"format": "torchrepro-record", "schema_version": 1}'
        >>> parse_header(old, "old.jsonl")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        torchrepro.errors.RecordError: 'old.jsonl' has record schema version 1; expected 3. ...
    """
    try:
        found = json.loads(line)
    except json.JSONDecodeError:
        if f'"{FORMAT}"' in line[:40]:
            raise RecordError(
                f"{str(path)!r} is cut inside its header ({len(line)} characters, no end); "
                "expected a complete first line. The process stopped while writing it (a "
                "crash or kill at its first step): record the run again."
            ) from None
        found = None
    if not isinstance(found, dict) or found.get("format") != FORMAT:
        raise RecordError(
            f"{str(path)!r} does not start with a torchrepro record header; got "
            f"{line[:80]!r}; expected a JSON object with format={FORMAT!r}. "
            "Pass a file written by torchrepro.record."
        )
    env, options = found.get("env", {}), found.get("options", {})
    if not isinstance(env, dict) or not isinstance(options, dict):
        raise RecordError(
            f"{str(path)!r} has a header whose env or options is not an object; expected "
            "the header torchrepro.record writes. The file was modified."
        )
    version = found.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RecordError(
            f"{str(path)!r} has record schema version {version!r}; expected {SCHEMA_VERSION}. "
            "Read it with the torchrepro version that wrote it, or record the run again."
        )
    return found


def parse_entry(line: str, path: str | os.PathLike[str], number: int) -> dict[str, Any]:
    """The step entry on complete line ``number`` (1-based) of the record at ``path``.

    Raises:
        RecordError: if the line is not JSON (a torn or mixed write) or not a step entry.

    Examples:
        >>> parse_entry('{"step": 0, "params": {}}', "run.jsonl", 2)
        {'step': 0, 'params': {}}
        >>> parse_entry('{"step": 0, "par', "run.jsonl", 2)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        torchrepro.errors.RecordError: 'run.jsonl' line 2 is corrupt (...); expected one JSON ...
    """
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as e:
        raise RecordError(
            f"{str(path)!r} line {number} is corrupt ({e.msg}); expected one JSON entry per "
            "line. Only the last line may be partial; the file was modified or mixed."
        ) from e
    if not isinstance(entry, dict) or STEP not in entry:
        raise RecordError(
            f"{str(path)!r} line {number} is not a step entry; got {line[:80]!r}; expected "
            'an object with "step". The file was modified or mixed.'
        )
    problem = _layout_problem(entry)
    if problem is not None:
        raise RecordError(
            f"{str(path)!r} line {number} is not a step entry of this layout: {problem}. "
            "The file was modified, or written by another torchrepro version."
        )
    return entry


def _is_map(value: Any, of: tuple[type, ...]) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, of) for k, v in value.items()
    )


def _layout_problem(entry: dict[str, Any]) -> str | None:
    """What in an entry is not as the writer writes it, in words; None if nothing."""
    step = entry[STEP]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f'"step" is {step!r}, expected a non-negative int'
    optimizer = entry.get(OPTIMIZER)
    if optimizer is not None and (not isinstance(optimizer, int) or isinstance(optimizer, bool)):
        return f'"optimizer" is {optimizer!r}, expected an int or null'
    for section in (PARAMS, GRADS, RNG):
        if section in entry and not _is_map(entry[section], (str,)):
            return f'"{section}" is not an object of names to digests'
    if LOG in entry and not _is_map(entry[LOG], (int, float, str, bool)):
        return f'"{LOG}" is not an object of names to numbers or strings'
    batch = entry.get(BATCH, [])
    if not isinstance(batch, list) or not all(_is_map(b, (str,)) for b in batch):
        return f'"{BATCH}" is not a list of objects of labels to digests'
    return None


@dataclass(frozen=True)
class Record:
    """A run record read back: its header, its step entries, and whether it was cut short.

    Attributes:
        path: Where it was read from.
        header: The header line (format, schema version, rank, options, env manifest).
        entries: One dict per optimizer step, in the order they were written.
        truncated: True if the file ended in a partial line (a crash mid-write).
        incomplete: Why its recorder stopped before the training ended (an I/O error),
            else None (:func:`~torchrepro.records.files.read_incomplete`).
    """

    path: str
    header: dict[str, Any]
    entries: list[dict[str, Any]]
    truncated: bool = False
    incomplete: str | None = None

    @property
    def env(self) -> dict[str, Any]:
        """The environment manifest of the recorded process."""
        env: dict[str, Any] = self.header.get("env", {})
        return env


def read_record(path: str | os.PathLike[str]) -> Record:
    """Read a run record, up to its last complete entry.

    Args:
        path: A file written by :func:`torchrepro.record` (one rank's file under torchrun).

    Returns:
        The :class:`Record`.

    Raises:
        RecordError: if the file is empty, its header is not a torchrepro header, its schema
            version is not this library's, or a complete line in the middle is corrupt.

    Examples:
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> with torchrepro.record("run.jsonl", grads=True):
        ...     for _ in range(2):
        ...         opt.zero_grad(); model(torch.ones(1, 2)).sum().backward(); opt.step()
        >>> rec = read_record("run.jsonl")
        >>> len(rec.entries), sorted(rec.entries[1]), rec.truncated
        (2, ['algorithm', 'grads', 'optimizer', 'params', 'stats', 'step'], False)
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecordError(
            f"cannot read record {str(p)!r}: {e}; expected a JSON-lines file written by "
            "torchrepro.record. Check the path."
        ) from e
    lines = text.split("\n")
    # A file that does not end in a newline was cut mid-write: its last line is partial.
    tail = lines.pop()
    found = parse_header(lines[0] if lines else tail, p)
    entries = [parse_entry(line, p, number) for number, line in enumerate(lines[1:], start=2)]
    truncated = False
    if tail and lines:
        try:
            entries.append(parse_entry(tail, p, len(lines) + 1))
        except RecordError:
            truncated = True
    return Record(str(p), found, entries, truncated, read_incomplete(p))
