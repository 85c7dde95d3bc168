"""Every loader of torchrepro, fed random bytes and random nested structures: a
TorchReproError or a value, never another exception and never a hang."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torchrepro
from conftest import time_bound
from torchrepro import state
from torchrepro.errors import TorchReproError
from torchrepro.localize import read_trace
from torchrepro.records import read_record
from torchrepro.state import RNGState

FILE_LOADERS: dict[str, Callable[[Path], Any]] = {
    "load_rng": state.load_rng,
    "load_checkpoint": state.load_checkpoint,
    "read_record": read_record,
    "read_trace": read_trace,
}
STATE_LOADERS: dict[str, Callable[[Any], Any]] = {
    "RNGState.from_state_dict": RNGState.from_state_dict,
    "load_state_dict": state.load_state_dict,
    "fingerprint": torchrepro.fingerprint,
}
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(autouse=True)
def bounded() -> Iterator[None]:
    """Each example must end within seconds: a hang fails the test instead of the suite."""
    with time_bound(60, "a loader hung on its input"):
        yield


def valid_files(folder: Path) -> dict[str, bytes]:
    """What each file loader reads when all is well: real files, to mutate."""
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state.save_rng(folder / "rng.pt")
    state.save_checkpoint(folder / "ckpt.pt", {"model": model.state_dict()})
    with torchrepro.record(folder / "run.jsonl"):
        opt.zero_grad()
        model(torch.ones(1, 2)).sum().backward()
        opt.step()
    trace = '{"format": "torchrepro-trace", "step": 0}\n'
    (folder / "t.jsonl").write_text(trace)
    return {
        "load_rng": (folder / "rng.pt").read_bytes(),
        "load_checkpoint": (folder / "ckpt.pt").read_bytes(),
        "read_record": (folder / "run.jsonl").read_bytes(),
        "read_trace": trace.encode(),
    }


@pytest.mark.parametrize("loader", sorted(FILE_LOADERS))
@SETTINGS
@given(junk=st.binary(max_size=4096))
def test_random_bytes_give_a_torchrepro_error(loader: str, junk: bytes, tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(junk)
    with pytest.raises(TorchReproError):
        FILE_LOADERS[loader](path)


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The real files, made once: every example damages the same bytes."""
    return valid_files(tmp_path_factory.mktemp("valid"))


@pytest.mark.parametrize("loader", sorted(FILE_LOADERS))
@SETTINGS
@given(data=st.data())
def test_damaged_real_files_load_or_give_a_torchrepro_error(
    loader: str,
    data: st.DataObject,
    valid: dict[str, bytes],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    folder = tmp_path_factory.mktemp("files")
    original = bytearray(valid[loader])
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(original) - 1))
        original[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(original)))
    path = folder / "damaged"
    path.write_bytes(bytes(original[:cut]))
    try:
        FILE_LOADERS[loader](path)
    except TorchReproError:
        pass


LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.builds(torch.zeros, st.integers(0, 3)),
)
STRUCTURES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=20,
)


@pytest.mark.parametrize("loader", sorted(STATE_LOADERS))
@SETTINGS
@given(structure=STRUCTURES)
def test_random_structures_give_a_value_or_a_torchrepro_error(loader: str, structure: Any) -> None:
    state = torchrepro.capture_rng()
    try:
        STATE_LOADERS[loader](structure)
    except TorchReproError:
        pass
    finally:
        torchrepro.restore_rng(state)  # load_state_dict may have restored a valid one
