from __future__ import annotations

from typing import Any, NamedTuple

import pytest

from torchrepro.compare import EnvDifference, RngDifference, classify, diagnose
from torchrepro.compare.causes import CATEGORIES
from torchrepro.localize import Localization

THREADS = EnvDifference("threads.intra_op", 4, 8, "thread count: ...")
# torch's generator parted at step 1 and is drawn from; numpy's parted at step 0, never drawn.
CLOCK = RngDifference("torch", entry=1, step=1, drew=(True, True), steps=4)
IDLE = RngDifference("numpy", entry=0, step=0, drew=(False, False), steps=4)
SAME_STEP = RngDifference("torch", entry=3, step=3, drew=(True, True), steps=4)


def op(kind: str = "op", name: str = "aten.mm.default", **fields: Any) -> Localization:
    return Localization(kind, name, "encoder.layer.1.output.dense", "forward", 7, **fields)


class Case(NamedTuple):
    keys: tuple[str, ...]
    evidence: dict[str, Any]
    category: str
    says: str  # a part of the evidence


CASES = {
    "a random op's different output": Case(
        ("grads.w",), {"localization": op(name="aten.bernoulli_.float", random=True)},
        "rng", "aten.bernoulli_.float in encoder.layer.1.output.dense (forward) draws random",
    ),
    "a read of memory no op wrote": Case(
        ("grads.w",),
        {"localization": op("uninitialized", "aten.add.Tensor", source_op="aten.empty_like")},
        "uninitialized-memory", "read memory made by aten.empty_like that no op had written",
    ),
    "inputs that already differed": Case(
        ("grads.w",), {"localization": op("input")},
        "outside-torch", "the inputs of aten.mm.default in encoder.layer.1.output.dense",
    ),
    "different ops executed": Case(
        ("grads.w",), {"localization": op("control-flow", other_op="aten.add.Tensor")},
        "control-flow", "the runs executed different ops at op #7",
    ),
    "more ops in one run": Case(
        ("params.w",), {"localization": op("length")},
        "control-flow", "one run executed more ops in the step",
    ),
    "an op with a different environment": Case(
        ("grads.w",), {"localization": op(), "environment": [THREADS]},
        "environment", "the environments differ in threads.intra_op",
    ),
    "an op in the same environment": Case(
        ("grads.w",), {"localization": op()},
        "nondeterministic-op", "gave a different output from identical inputs, in the same",
    ),
    "the batch": Case(
        ("batch[0] 4 int64", "params.w"), {"rng": [IDLE]},
        "data", "the input batch (batch 4 int64) differs at step 3, before the model sees it",
    ),
    "the batch after a drawn generator parted": Case(
        ("batch[0] 4 int64",), {"rng": [CLOCK]},
        "rng", "torch's CPU generator differs from step 1, before the first computed",
    ),
    "the batch drawn from a generator that parts in that step": Case(
        ("batch[0] 4x8 float32",), {"rng": [SAME_STEP]},
        "rng", "parts in that same step: a reseed or a different number of draws",
    ),
    "an op that draws inside a fused kernel": Case(
        ("grads.w",), {"localization": op(), "rng": [SAME_STEP]},
        "rng", "parts in that same step: the op likely draws from it",
    ),
    "parameters after a drawn generator parted": Case(
        ("params.w",), {"rng": [IDLE, CLOCK]},
        "rng", "(parameters of w at step 3), and the training draws from it",
    ),
    "parameters after a generator never drawn parted": Case(
        ("params.w",), {"rng": [IDLE]},
        "unknown", "no replay named an op",
    ),
    "a generator that parts at the same step": Case(
        ("grads.w",), {"rng": [SAME_STEP]},
        "unknown", "torch's CPU generator differs from that step too (whether it parted before",
    ),
    "a replay that saw the same values": Case(
        ("grads.w",), {"localization": Localization("none")},
        "unknown", "the replay of step 3 computed the same values in both runs",
    ),
    "an environment difference, not localized": Case(
        ("grads.w",), {"environment": [THREADS]},
        "environment", "no replay named an op, and the environments differ in threads.intra_op",
    ),
    "a different number of steps": Case(
        (), {}, "control-flow", "the runs recorded a different number of steps (at step 3)",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_each_kind_of_evidence_gives_its_category(case: Case) -> None:
    found = classify(case.keys, step=3, entry=3, **case.evidence)
    assert found.category == case.category, found.evidence
    assert case.says in found.evidence
    assert found.category in CATEGORIES and found.step == 3


def test_a_localized_diagnosis_names_the_module_op_and_rank_of_the_replay() -> None:
    where = op("input", rank=1)
    found = classify(["grads.w"], step=3, rank=0, localization=where)
    assert (found.module, found.op, found.rank) == (
        "encoder.layer.1.output.dense",
        "aten.mm.default",
        1,
    )
    outside = Localization("input", "aten.add.Tensor", "(outside any module)", "forward", 0)
    assert classify(["grads.w"], localization=outside).module is None


def test_a_drawn_generator_that_parted_first_is_named_beside_what_the_replay_saw() -> None:
    found = classify(["grads.w"], step=3, entry=3, rng=[CLOCK], localization=op("input"))
    assert found.category == "outside-torch"
    assert found.evidence.endswith("torch's CPU generator differs from step 1, before the "
                                   "first computed difference (gradients of w at step 3), "
                                   "and the training draws from it")  # fmt: skip


DETERMINISTIC_OFF = [{"determinism": {"deterministic_algorithms": False}}] * 2


@pytest.mark.parametrize(
    ("name", "evidence", "advised"),
    [
        ("a nondeterministic op", {"localization": op()}, True),
        ("a random op", {"localization": op(random=True)}, False),
        ("an op with another environment", {"localization": op(), "environment": [THREADS]}, False),
        ("uninitialized memory", {"localization": op("uninitialized")}, False),
        ("values from outside torch", {"localization": op("input")}, False),
        ("no localization", {}, False),
    ],
)
def test_deterministic_algorithms_are_advised_only_for_an_op_they_can_fix(
    name: str, evidence: dict[str, Any], advised: bool
) -> None:
    causes = diagnose(["grads.w"], step=3, manifests=DETERMINISTIC_OFF, **evidence)
    assert any("--deterministic" in cause for cause in causes) is advised, causes


def test_deterministic_algorithms_already_on_are_not_advised_again() -> None:
    on = [{"determinism": {"deterministic_algorithms": True, "warn_only": True}}] * 2
    causes = diagnose(["grads.w"], step=3, manifests=on, localization=op())
    assert not any("--deterministic" in cause for cause in causes)
    assert any("warn-only mode" in cause for cause in causes)


def test_each_cause_line_leads_with_its_evidence() -> None:
    causes = diagnose(["params.w"], step=3, environment=[THREADS], localization=op())
    assert causes == [
        "threads.intra_op differs between the runs: thread count: ...",
        "in the replay of step 3, aten.mm.default in encoder.layer.1.output.dense (forward) "
        "gave a different output from identical inputs, and the environments differ in "
        "threads.intra_op: the environment difference is the likelier cause; run both alike",
    ]


def test_runs_that_did_not_diverge_have_only_their_environment_as_causes() -> None:
    assert diagnose(None, environment=[THREADS], rng=[IDLE]) == [
        "threads.intra_op differs between the runs: thread count: ..."
    ]
