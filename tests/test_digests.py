from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchrepro.digests import ALGORITHMS, LANES, XXH3, Digest, _digest_tensors, fingerprint
from torchrepro.errors import FingerprintError, TorchReproError

CASES: dict[str, Callable[[], torch.Tensor]] = {
    "float32": lambda: torch.tensor([0.0, -0.0, 1.5, float("nan"), float("inf")]),
    "float64": lambda: torch.linspace(-1, 1, 7, dtype=torch.float64),
    "float16": lambda: torch.arange(6, dtype=torch.float16).reshape(2, 3) / 3,
    "bfloat16": lambda: torch.arange(6, dtype=torch.bfloat16) / 3,
    "float8_e4m3fn": lambda: torch.tensor([0.5, 1.0, -2.0]).to(torch.float8_e4m3fn),
    "float8_e5m2": lambda: torch.tensor([0.5, 1.0, -2.0]).to(torch.float8_e5m2),
    "int64": lambda: torch.tensor([-(2**63), -1, 0, 2**63 - 1]),
    "int32": lambda: torch.arange(-3, 4, dtype=torch.int32),
    "int16": lambda: torch.arange(-3, 4, dtype=torch.int16),
    "int8": lambda: torch.arange(-3, 4, dtype=torch.int8),
    "uint8": lambda: torch.arange(0, 250, 7, dtype=torch.uint8),
    "bool": lambda: torch.tensor([True, False, True]),
    "complex64": lambda: torch.tensor([1 + 2j, -0.0 - 3j], dtype=torch.complex64),
    "complex128": lambda: torch.tensor([1 + 2j], dtype=torch.complex128),
    "scalar": lambda: torch.tensor(3.0),
    "empty": lambda: torch.zeros(0, 3),
}

# Golden digests: (xxh3_128, lanes64x2-v1). A change here changes every record ever written:
# bump the algorithm's name ("-v2") and records.SCHEMA_VERSION instead of editing a value.
GOLDEN = {
    "float32": ("0ec7e0a8d228c7247d5e79f98747cacb", "06325aed34605ea89c508ee03065a67b"),
    "float64": ("cc49f44386245567d119a4d86e2c5c1c", "17e890790248282fdd6b36d9fdfc5d2a"),
    "float16": ("d1e9be311c95d6fbc7560641a509a780", "19ae8fe876842789a252740727deb233"),
    "bfloat16": ("37f7f3d6991d5430c0e689ddfbb763e4", "9d7c14de9706793927e56e7dd9cac0fb"),
    "float8_e4m3fn": ("b959cd2e3b754170d38a13af31e94dd6", "055d5a6a1e157b2d3bd19e28a191c6f1"),
    "float8_e5m2": ("4cd8804ec6c368334eaeb7d565d169cc", "39b3b83620e9ba99d3141d4a86efb2e5"),
    "int64": ("3d8d0e26ea397300b8fed53d83e75c59", "ffb8839108659f3f7eda6af920aa42be"),
    "int32": ("523d69684c2f7e67b71cb6d626785338", "51a47e3c3ce1862366a49f63e4ae8ca9"),
    "int16": ("7a4c2287fdbf6c9ed20c87bb33e489d8", "b7414f492e0c0b90bae63ad7a9729aa6"),
    "int8": ("cd6dd7af54b7be01298278e52c727c5e", "7099f05f12207f54e45a34c3fd1bd847"),
    "uint8": ("55868b4b58fecafe407b41b4e4fc64b9", "4b64e85df7e4d5972ff3d0431cb1b7ac"),
    "bool": ("821c1dc25af1ff2bd8b8fa0a15623374", "e6541d247b8e620bac59cb0d7cfe96e5"),
    "complex64": ("82cf8e3be0fd45f6662f7767fae8c99d", "48b003cc3a913becb55c5f7aa1fbf91b"),
    "complex128": ("9fbe8291b616d66f2a55c0d17b68ac48", "0a1e29b133bdabc1a64da24d74c1433b"),
    "scalar": ("4821398fa04de7d168ddeb09e976c482", "a457613ab10cdc0d25adb293d6b17e0c"),
    "empty": ("28c83307830c6dfa46c29eb4860c9e07", "8aa7e9934cc923606f49acf88fc760ba"),
}

M64 = (1 << 64) - 1


def reference_lanes(t: torch.Tensor) -> str:
    """lanes64x2-v1 written out in Python integers, independent of the torch implementation."""

    def fmix(z: int, mix: tuple[tuple[int, int], tuple[int, int], int]) -> int:
        (r1, m1), (r2, m2), r3 = mix
        z = ((z ^ (z >> r1)) * m1) & M64
        z = ((z ^ (z >> r2)) * m2) & M64
        return z ^ (z >> r3)

    mix_a = ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB), 31)
    mix_b = ((33, 0xFF51AFD7ED558CCD), (33, 0xC4CEB9FE1A85EC53), 33)
    src = torch.view_as_real(t) if t.is_complex() else t
    raw = bytes(src.contiguous().reshape(-1).view(torch.uint8).tolist())
    raw += b"\0" * (-len(raw) % 8)
    a = b = 0
    for pos, (lane,) in enumerate(struct.iter_unpack("<Q", raw)):
        a += fmix(lane ^ ((pos * 0x9E3779B97F4A7C15 + 0x243F6A8885A308D3) & M64), mix_a)
        b += fmix(lane ^ ((pos * 0xD1B54A32D192ED03 + 0x13198A2E03707344) & M64), mix_b)
    shape = ",".join(str(s) for s in t.shape)
    header = f"{str(t.dtype).removeprefix('torch.')}\0{shape}\0".encode()
    payload = b"torchrepro-lanes64x2-v1\0" + header
    payload += (a & M64).to_bytes(8, "little") + (b & M64).to_bytes(8, "little")
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_digests_of_each_dtype_are_stable(name: str) -> None:
    t = CASES[name]()
    assert (fingerprint(t, algorithm="xxh3"), fingerprint(t, algorithm="lanes")) == GOLDEN[name]


@pytest.mark.parametrize("name", sorted(CASES))
def test_lane_digest_matches_the_python_reference(name: str) -> None:
    t = CASES[name]()
    assert fingerprint(t, algorithm="lanes") == reference_lanes(t)


def test_cpu_default_is_xxh3_and_digest_names_its_algorithm() -> None:
    d = fingerprint(torch.ones(3))
    assert isinstance(d, Digest) and len(d) == 32 and d.algorithm == XXH3
    assert fingerprint(torch.ones(3), algorithm="lanes").algorithm == LANES


@pytest.mark.parametrize("algorithm", ["xxh3", "lanes"])
def test_swapping_two_elements_changes_the_digest(algorithm: str) -> None:
    x = torch.arange(16, dtype=torch.float32)
    y = x.clone()
    y[[3, 11]] = y[[11, 3]]
    assert fingerprint(x, algorithm=algorithm) != fingerprint(y, algorithm=algorithm)


@pytest.mark.parametrize("algorithm", ["xxh3", "lanes"])
def test_swapping_two_64_bit_lanes_changes_the_digest(algorithm: str) -> None:
    # Whole lanes moved: a position-blind sum of mixed lanes would not notice.
    x = torch.arange(8, dtype=torch.int64)
    assert fingerprint(x, algorithm=algorithm) != fingerprint(x.flip(0), algorithm=algorithm)


@pytest.mark.parametrize("algorithm", ["xxh3", "lanes"])
def test_sign_of_zero_changes_the_digest(algorithm: str) -> None:
    assert fingerprint(torch.tensor([0.0]), algorithm=algorithm) != fingerprint(
        torch.tensor([-0.0]), algorithm=algorithm
    )


@pytest.mark.parametrize("algorithm", ["xxh3", "lanes"])
def test_nan_payload_changes_the_digest(algorithm: str) -> None:
    a = torch.tensor([0x7FC00000], dtype=torch.int32).view(torch.float32)
    b = torch.tensor([0x7FC00001], dtype=torch.int32).view(torch.float32)
    assert a.isnan().all() and b.isnan().all()
    assert fingerprint(a, algorithm=algorithm) != fingerprint(b, algorithm=algorithm)


@pytest.mark.parametrize("algorithm", ["xxh3", "lanes"])
def test_dtype_and_shape_are_part_of_the_digest(algorithm: str) -> None:
    x = torch.zeros(6, dtype=torch.int32)
    digests = {
        fingerprint(x, algorithm=algorithm),
        fingerprint(x.reshape(2, 3), algorithm=algorithm),
        fingerprint(x.view(torch.float32), algorithm=algorithm),
        fingerprint(torch.zeros(0), algorithm=algorithm),
        fingerprint(torch.zeros(0, 1), algorithm=algorithm),
    }
    assert len(digests) == 5


@pytest.mark.parametrize("algorithm", ["xxh3", "lanes"])
def test_non_contiguous_views_digest_like_their_contiguous_copies(algorithm: str) -> None:
    base = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    views = [
        base.t(),
        base[:, 1::3],
        base[2:5, 3],
        base.unsqueeze(0).expand(3, 6, 10),
        base.reshape(1, 6, 10, 1).to(memory_format=torch.channels_last).reshape(6, 10),
        torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
        (base[:, :4] + 1j * base[:, 4:8]).conj(),
    ]
    for v in views:
        assert fingerprint(v, algorithm=algorithm) == fingerprint(
            v.resolve_conj().contiguous().clone(), algorithm=algorithm
        )


@pytest.mark.parametrize("algorithm", ["xxh3", "lanes"])
@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=12),
    chunk=st.integers(1, 400),
)
def test_chunked_and_batched_digests_equal_one_shot(
    algorithm: str, sizes: list[int], chunk: int
) -> None:
    g = torch.Generator().manual_seed(sum(sizes) + chunk)
    tensors = [torch.randint(0, 255, (n,), dtype=torch.uint8, generator=g) for n in sizes]
    one_shot = [fingerprint(t, algorithm=algorithm) for t in tensors]
    batched = _digest_tensors(tensors, algorithm).resolve()
    chunked = _digest_tensors(tensors, algorithm, chunk_bytes=chunk).resolve()
    assert batched == one_shot and chunked == one_shot


def test_module_optimizer_and_state_dict_digests_follow_their_contents() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    same = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    same.load_state_dict(model.state_dict())
    assert fingerprint(model) == fingerprint(same) == fingerprint(model.state_dict())
    assert fingerprint(model, algorithm="lanes") == fingerprint(same, algorithm="lanes")
    with torch.no_grad():
        same[0].bias[0] += 1
    assert fingerprint(model) != fingerprint(same)

    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = fingerprint(opt)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    after = fingerprint(opt)
    assert after == fingerprint(opt.state_dict())
    assert before != after  # momentum buffers appeared
    opt.param_groups[0]["lr"] = 0.2
    assert fingerprint(opt) != after  # hyperparameters count too


def test_composite_digests_tell_float_zero_signs_and_key_names_apart() -> None:
    assert fingerprint({"a": 0.0}) != fingerprint({"a": -0.0})
    assert fingerprint({"a": torch.ones(1)}) != fingerprint({"b": torch.ones(1)})


def test_unsupported_inputs_raise_with_a_fix() -> None:
    with pytest.raises(FingerprintError, match="to_dense"):
        fingerprint(torch.eye(3).to_sparse())
    with pytest.raises(FingerprintError, match="meta"):
        fingerprint(torch.empty(3, device="meta"))
    with pytest.raises(FingerprintError, match="unknown digest algorithm"):
        fingerprint(torch.ones(1), algorithm="md5")
    with pytest.raises(TorchReproError, match="expected a tensor"):
        fingerprint(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):  # also a TypeError, as callers expect
        fingerprint({"a": object()})


def test_a_tensor_whose_storage_was_freed_is_refused_not_read() -> None:
    # FSDP frees unsharded parameters this way: the shape stays, the memory goes.
    base = torch.randn(1000)
    view = base.view(10, 100)
    param = torch.nn.Parameter(torch.randn(1000))
    fingerprint(param)  # read in place once: its window is kept while it stays valid
    for t in (base, param):
        t.untyped_storage().resize_(0)
    for t in (view, param):
        for algorithm in ALGORITHMS:
            with pytest.raises(FingerprintError, match="storage was freed"):
                fingerprint(t, algorithm=algorithm)


def test_a_parameter_digested_again_follows_its_data_in_place_and_reassigned() -> None:
    param = torch.nn.Parameter(torch.arange(6.0))
    assert fingerprint(param) == fingerprint(torch.arange(6.0))
    with torch.no_grad():
        param.mul_(2)  # same memory, new values
    assert fingerprint(param) == fingerprint(torch.arange(6.0) * 2)
    param.data = torch.arange(6.0).reshape(2, 3).t()  # new memory, shape and strides
    assert fingerprint(param) == fingerprint(torch.arange(6.0).reshape(2, 3).t().contiguous())
    param.data = param.data.half()
    assert fingerprint(param) == fingerprint(param.detach().clone())


def test_empty_mappings_stay_visible_in_a_digest() -> None:
    assert fingerprint({"a": {}}) != fingerprint({})
    assert fingerprint({"a": {}}) != fingerprint({"b": {}})


def test_a_state_that_contains_itself_is_refused_not_a_recursion_error() -> None:
    cyclic: dict[str, object] = {"w": torch.zeros(1)}
    cyclic["self"] = cyclic
    with pytest.raises(FingerprintError, match="contains itself"):
        fingerprint(cyclic)


def test_a_state_nested_5000_deep_is_refused_not_a_recursion_error() -> None:
    deep: dict[str, object] = {}
    for _ in range(5000):
        deep = {"x": deep}
    with pytest.raises(FingerprintError, match="nested more than 100 levels"):
        fingerprint(deep)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: torch.nested.nested_tensor(
                [torch.zeros(2), torch.zeros(3)], layout=torch.jagged
            ),
            "nested tensor",
        ),
        (lambda: torch.zeros(2, 2).to_sparse(), "layout torch.sparse_coo"),
        (lambda: torch.zeros(2, device="meta"), "meta tensor: it holds no data"),
    ],
    ids=["nested", "sparse", "meta"],
)
def test_tensors_without_plain_data_are_a_fingerprint_error(
    make: Callable[[], torch.Tensor], message: str
) -> None:
    with pytest.raises(FingerprintError, match=message) as error:
        fingerprint(make())
    assert "int_repr" not in str(error.value)
