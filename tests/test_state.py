"""RNG capture and restore, saved states, and torchrepro.state_dict."""

from __future__ import annotations

import io
import os
import pickle
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

import torchrepro
from torchrepro import _codec, _files, _sources, state
from torchrepro.errors import StateError
from torchrepro.state import RNGState, _container, load_rng, save_rng


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[None]:
    with torchrepro.isolate_rng():
        yield
    for name in _sources.registered_names():
        _sources.unregister(name)


def _draws() -> list[float]:
    """One draw from every built-in host source."""
    return [random.random(), float(np.random.rand()), float(torch.rand(()))]


def _live() -> dict[str, Any]:
    return state.capture_rng().state_dict()["sources"]


def _same_live(before: dict[str, Any]) -> bool:
    return _container.checksum({"s": before}) == _container.checksum({"s": _live()})


# ---------------------------------------------------------------- round trips

GENERATORS: dict[str, Callable[[], Any]] = {
    "numpy.Generator": lambda: np.random.default_rng(1),
    "numpy.Generator.Philox": lambda: np.random.Generator(np.random.Philox(2)),
    "numpy.RandomState": lambda: np.random.RandomState(3),
    "torch.Generator": lambda: torch.Generator().manual_seed(4),
    "random.Random": lambda: random.Random(5),
}


def _draw_from(gen: Any) -> float:
    if isinstance(gen, torch.Generator):
        return float(torch.rand((), generator=gen))
    return float(gen.random()) if not isinstance(gen, np.random.RandomState) else gen.rand()


@settings(max_examples=25, deadline=None)
@given(count=st.integers(0, 700), gauss=st.booleans())
def test_capture_draw_restore_draw_gives_the_same_numbers_for_every_source(
    count: int, gauss: bool
) -> None:
    generators = {name: make() for name, make in GENERATORS.items()}
    for name, gen in generators.items():
        torchrepro.register_generator(gen, name)
    for _ in range(count):
        _draws()
    if gauss:  # leaves a cached Gaussian in Python's and numpy's state
        random.gauss(0, 1), np.random.standard_normal()
    saved = torchrepro.capture_rng()
    first = [*_draws(), *map(_draw_from, generators.values())]
    torchrepro.restore_rng(RNGState.from_state_dict(saved.state_dict()))
    assert [*_draws(), *map(_draw_from, generators.values())] == first


def test_state_dict_reads_back_with_weights_only_and_no_allow_list(tmp_path: Path) -> None:
    torchrepro.register_generator(np.random.default_rng(7), "augment")
    path = tmp_path / "rng.pt"
    torch.save(torchrepro.capture_rng().state_dict(), path)
    expected = _draws()
    loaded = torch.load(path, weights_only=True)
    torchrepro.restore_rng(RNGState.from_state_dict(loaded))
    assert _draws() == expected


def test_save_rng_and_load_rng_round_trip(tmp_path: Path) -> None:
    saved = save_rng(tmp_path / "rng.pt")
    expected = _draws()
    assert load_rng(tmp_path / "rng.pt") == saved
    torchrepro.restore_rng(load_rng(tmp_path / "rng.pt"))
    assert _draws() == expected


def test_seed_everything_reseeds_registered_generators_from_the_root_seed() -> None:
    gen = torch.Generator()
    torchrepro.register_generator(gen, "noise")
    torchrepro.seed_everything(11)
    first = float(torch.rand((), generator=gen))
    torchrepro.seed_everything(11)
    assert float(torch.rand((), generator=gen)) == first


def test_registering_the_same_generator_twice_keeps_one_entry() -> None:
    gen = np.random.default_rng(0)
    assert torchrepro.register_generator(gen) == torchrepro.register_generator(gen)
    assert len(_sources.registered_names()) == 1


def test_registering_something_that_is_not_a_generator_is_refused() -> None:
    with pytest.raises(StateError, match="expected a torch.Generator"):
        torchrepro.register_generator(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------- refusals, all or nothing


def _resealed(edit: Callable[[dict[str, Any]], None]) -> RNGState:
    """A captured state edited after capture, with a valid checksum."""
    body = torchrepro.capture_rng().state_dict()
    edit(body["sources"])
    return RNGState.from_state_dict(_container.seal(body))


def _short_numpy_key(sources: dict[str, Any]) -> None:
    array = sources["numpy"]["state"]["state"]["key"]
    array["__ndarray__"] = array["__ndarray__"][:-4]
    array["shape"] = [623]


def _long_python_state(sources: dict[str, Any]) -> None:
    sources["python"]["internal"] = torch.zeros(626, dtype=torch.int64)


def _short_torch_state(sources: dict[str, Any]) -> None:
    sources["torch"]["state"] = sources["torch"]["state"][:100]


def _cuda_on_two_devices(sources: dict[str, Any]) -> None:
    sources["cuda"] = {"kind": "torch.cuda", "states": [torch.zeros(16, dtype=torch.uint8)] * 2}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_short_numpy_key, "624 words"),
        (_long_python_state, "valid random.getstate"),
        (_short_torch_state, "valid CPU generator state"),
        (_cuda_on_two_devices, "skip=\\('cuda',\\)"),
    ],
    ids=["numpy-key-length", "python-length", "torch-length", "cuda-here-absent"],
)
def test_restore_refuses_a_wrong_part_and_applies_nothing(
    edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    bad = _resealed(edit)
    _draws()
    before = _live()
    with pytest.raises(StateError, match=message):
        torchrepro.restore_rng(bad)
    assert _same_live(before)


def test_a_cuda_state_saved_on_two_gpus_is_refused_on_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    two = {"kind": "torch.cuda", "states": [torch.zeros(16, dtype=torch.uint8)] * 2}
    with pytest.raises(StateError, match="2 device\\(s\\); this process sees 1"):
        _codec.decode_cuda(two)


def test_a_registered_generator_missing_at_restore_is_refused() -> None:
    torchrepro.register_generator(np.random.default_rng(0), "augment")
    saved = torchrepro.capture_rng()
    _sources.unregister("generator:augment")
    with pytest.raises(StateError, match="register_generator"):
        torchrepro.restore_rng(saved)
    torchrepro.restore_rng(saved, skip=("generator:augment",))


@pytest.mark.parametrize(
    ("version", "message"),
    [(2, "schema version 2; this torchrepro reads version 1"), (0, "unknown schema version 0")],
)
def test_another_schema_version_is_refused_not_guessed(version: int, message: str) -> None:
    body = torchrepro.capture_rng().state_dict()
    body["version"] = version
    with pytest.raises(StateError, match=message):
        RNGState.from_state_dict(_container.seal(body))


def test_an_edited_state_fails_its_checksum() -> None:
    body = torchrepro.capture_rng().state_dict()
    body["sources"]["torch"]["state"][10] ^= 1
    with pytest.raises(StateError, match="checksum"):
        RNGState.from_state_dict(body)


# ---------------------------------------------------------------- files


class _CreatesMarker:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
@pytest.mark.parametrize("loader", [load_rng, torchrepro.load_checkpoint])
def test_a_pickle_that_runs_code_is_refused_and_never_runs(
    tmp_path: Path, writer: str, loader: Callable[[Path], Any]
) -> None:
    marker, path = tmp_path / "marker", tmp_path / "evil.pt"
    payload = {"format": "torchrepro.rng", "evil": _CreatesMarker(marker)}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    with pytest.raises(StateError, match="not (unpickled|loaded), as a pickle can run code"):
        loader(path)
    assert not marker.exists()


@pytest.fixture(scope="module")
def saved_file(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("rng") / "rng.pt"
    save_rng(path)
    return path.read_bytes()


def _try_damaged(tmp_path: Path, saved: bytes, content: bytes) -> None:
    """Loading a damaged file raises StateError and changes nothing, or loads intact content."""
    path = tmp_path / "damaged.pt"
    path.write_bytes(content)
    before = _live()
    try:
        torchrepro.restore_rng(load_rng(path))
    except StateError:
        assert _same_live(before)
        return
    # Bytes the content does not depend on (zip padding, a record name) may flip harmlessly.
    assert load_rng(path) == RNGState.from_state_dict(
        torch.load(io.BytesIO(saved), weights_only=True)
    )


_DAMAGE = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_DAMAGE
@given(fraction=st.floats(0, 1, exclude_max=True))
def test_truncated_files_raise_and_leave_the_live_state_alone(
    tmp_path: Path, saved_file: bytes, fraction: float
) -> None:
    _try_damaged(tmp_path, saved_file, saved_file[: int(fraction * len(saved_file))])


@_DAMAGE
@given(fraction=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_bit_flipped_files_raise_and_leave_the_live_state_alone(
    tmp_path: Path, saved_file: bytes, fraction: float, bit: int
) -> None:
    content = bytearray(saved_file)
    content[int(fraction * len(content))] ^= 1 << bit
    _try_damaged(tmp_path, saved_file, bytes(content))


def test_a_flipped_bit_in_the_saved_generator_bytes_is_caught(
    tmp_path: Path, saved_file: bytes
) -> None:
    # Tensor bytes sit in the zip as they are; find the torch state's first 8 bytes.
    needle = torch.load(io.BytesIO(saved_file))["sources"]["torch"]["state"][:8].numpy().tobytes()
    content = bytearray(saved_file)
    content[content.index(needle) + 3] ^= 0x10
    (tmp_path / "flipped.pt").write_bytes(bytes(content))
    with pytest.raises(StateError, match=r"damaged: tensor storage .*\['torch'\]\['state'\]"):
        load_rng(tmp_path / "flipped.pt")


def test_a_crash_while_saving_leaves_the_previous_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rng.pt"
    first = save_rng(path)
    _draws()

    def crash(descriptor: int) -> None:
        raise OSError("disk went away")

    monkeypatch.setattr(_files.os, "fsync", crash)
    with pytest.raises(OSError, match="disk went away"):
        save_rng(path)
    monkeypatch.undo()
    assert load_rng(path) == first
    assert os.listdir(tmp_path) == ["rng.pt"]


# ---------------------------------------------------------------- torchrepro.state_dict


def test_state_dict_puts_back_rng_and_loader_positions() -> None:
    torchrepro.seed_everything(9)
    loader = DataLoader(list(range(20)), batch_size=4, shuffle=True)
    iterator = iter(loader)
    next(iterator), next(iterator)
    saved = torchrepro.state_dict()
    expected_batches = [batch.tolist() for batch in iterator]
    expected_draws = _draws()

    torchrepro.seed_everything(9)
    resumed = DataLoader(list(range(20)), batch_size=4, shuffle=True)
    torchrepro.load_state_dict(torch.load(_as_file(saved), weights_only=True))
    assert _draws() == expected_draws
    assert [batch.tolist() for batch in resumed] == expected_batches
    assert saved["loaders"] == [
        {"index": 0, "epoch": 0, "batch": 2, "samples": 20, "batch_size": 4}
    ]


def _as_file(value: object) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return buffer


def test_load_state_dict_refuses_another_seed_and_changes_nothing() -> None:
    torchrepro.seed_everything(9)
    saved = torchrepro.state_dict()
    torchrepro.seed_everything(10)
    before = _live()
    with pytest.raises(StateError, match="seed_everything\\(9\\)"):
        torchrepro.load_state_dict(saved)
    assert _same_live(before)


def test_load_state_dict_refuses_a_loader_that_does_not_fit_and_changes_nothing() -> None:
    torchrepro.seed_everything(9)
    loader = DataLoader(list(range(20)), batch_size=4, shuffle=True)
    next(iter(loader))
    saved = torchrepro.state_dict()
    torchrepro.seed_everything(9)
    other = DataLoader(list(range(24)), batch_size=4, shuffle=True)
    before = _live()
    with pytest.raises(StateError, match="24 samples"):
        torchrepro.load_state_dict(saved)
    assert _same_live(before)
    assert other.batch_size == 4


# -- bad input: a StateError at the call, before anything changes ------------------------


def test_a_generator_without_state_is_refused_at_registration() -> None:
    with pytest.raises(StateError, match="its state cannot be captured and restored"):
        torchrepro.register_generator(random.SystemRandom(), "os")
    torchrepro.capture_rng()  # nothing half registered


def test_register_generator_wants_the_generator_first_and_a_str_name() -> None:
    with pytest.raises(StateError, match="name must be a non-empty str; got 5"):
        torchrepro.register_generator(random.Random(0), 5)  # type: ignore[arg-type]


def test_restore_skips_exact_names_never_substrings() -> None:
    short, long = random.Random(0), random.Random(1)
    torchrepro.register_generator(short, "a")
    torchrepro.register_generator(long, "aug")
    try:
        saved = torchrepro.capture_rng()
        first = short.random(), long.random()
        torchrepro.restore_rng(saved, skip="generator:aug")
        assert short.random() == first[0]  # restored: "generator:a" is not skipped
        assert long.random() != first[1]  # skipped
    finally:
        _sources.unregister("generator:a")
        _sources.unregister("generator:aug")


@pytest.mark.parametrize("state", [None, {}, "x"], ids=["none", "dict", "str"])
def test_restore_and_save_want_an_rng_state(state: object, tmp_path: Path) -> None:
    with pytest.raises(StateError, match="expected an RNGState"):
        torchrepro.restore_rng(state)  # type: ignore[arg-type]
    if state is not None:  # save_rng(path) saves the current state
        with pytest.raises(StateError, match="expected an RNGState to save"):
            save_rng(tmp_path / "rng.pt", state)  # type: ignore[arg-type]
        assert not (tmp_path / "rng.pt").exists()


def test_messages_quote_damaged_keys_without_terminal_escapes() -> None:
    error = StateError("bad key " + chr(27) + "[31mred")
    assert chr(27) not in str(error) and "\\x1b[31mred" in str(error)


@pytest.mark.parametrize("shape", ["cyclic", "deep"])
def test_a_state_that_contains_itself_or_nests_5000_deep_is_a_state_error(shape: str) -> None:
    torchrepro.seed_everything(1)
    saved = torchrepro.state.state_dict()
    if shape == "cyclic":
        saved["rng"]["loop"] = saved
    else:
        deep: dict[str, object] = {}
        for _ in range(5000):
            deep = {"x": deep}
        saved["rng"]["deep"] = deep
    with pytest.raises(StateError, match="nested more than 64 levels deep"):
        torchrepro.state.load_state_dict(saved)
