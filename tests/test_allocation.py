"""Allocation: local/global ratios, caps, rounding, patterns, targets, and the cost estimate."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune.allocation import (
    Allocation,
    AllocationOptions,
    TargetUnreachableError,
    allocate,
    estimate_cost,
    round_removal,
)
from graphprune.analysis import Analysis, analyze
from graphprune.errors import UsageError
from graphprune.groups import Group
from graphprune.rules import Space

HW = 16  # 4x4 feature maps, batch is symbolic (counts as 1)


# model builders ---------------------------------------------------------------------------------
def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], x_shape: list[int | str]) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes, "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def chain_model(widths: tuple[int, ...], cin: int = 3, cout: int = 2) -> onnx.ModelProto:
    """x[N,cin,4,4] -> (Conv 1x1 + bias -> Relu) per width -> Conv 1x1 to cout -> y.

    Conv i has weight ``W{i}`` and bias ``b{i}``; the group of width i is found by ``Space("W{i}", 0)``.
    """
    rng = np.random.default_rng(0)
    chans = [cin, *widths, cout]
    nodes, inits, t = [], {}, "x"
    for i in range(1, len(chans)):
        inits[f"W{i}"] = rng.standard_normal((chans[i], chans[i - 1], 1, 1))
        inits[f"b{i}"] = rng.standard_normal(chans[i])
        out = "y" if i == len(chans) - 1 else f"c{i}"
        nodes.append(helper.make_node("Conv", [t, f"W{i}", f"b{i}"], [out], name=f"conv{i}"))
        if out != "y":
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"], name=f"relu{i}"))
            t = f"r{i}"
    return _model(nodes, inits, ["N", cin, 4, 4])


def group_of(a: Analysis, tensor: str, axis: int = 0) -> Group:
    (g,) = [g for g in a.groups if Space(tensor, axis) in g.indices]
    return g


def ids(a: Analysis, n: int) -> list[int]:
    return [group_of(a, f"W{i}").id for i in range(1, n + 1)]


def index_scores(a: Analysis) -> dict[int, np.ndarray]:
    """Score = unit index: the lowest indices go first."""
    return {g.id: np.arange(g.n_units, dtype=np.float64) for g in a.groups if g.n_units}


def removed_count(al: Allocation, gid: int) -> int:
    return al.decisions[gid].removed


def recount(a: Analysis, kept: Mapping[int, np.ndarray]) -> tuple[int, int]:
    """Independent check: slice the initializers by hand, re-analyse, count MACs and params."""
    by_id = {g.id: g for g in a.groups}
    removed: dict[Space, set[int]] = {}
    for gid, units in kept.items():
        g = by_id[gid]
        drop = np.setdiff1d(np.arange(g.n_units), units)
        for s in g.spaces:
            removed.setdefault(s, set()).update(g.removed_indices(s, drop).tolist())
    m = onnx.ModelProto()
    m.CopyFrom(a.model)
    del m.graph.value_info[:]
    for init in m.graph.initializer:
        arr = numpy_helper.to_array(init)
        for s, rem in removed.items():
            if s.tensor == init.name:
                arr = np.delete(arr, sorted(rem), axis=s.axis)
        init.CopyFrom(numpy_helper.from_array(arr, init.name))
    c = analyze(m).cost
    return c.macs, c.params


@pytest.fixture(scope="module")
def chain8() -> Analysis:
    return analyze(chain_model((8, 8, 8)))


# local ratio ------------------------------------------------------------------------------------
def test_local_ratio_removes_floor_of_ratio_times_units() -> None:
    a = analyze(chain_model((10, 7, 16)))
    g10, g7, g16 = ids(a, 3)
    al = allocate(a, index_scores(a), AllocationOptions(ratio=0.5))
    assert [removed_count(al, g) for g in (g10, g7, g16)] == [5, 3, 8]  # floor(3.5) = 3
    al = allocate(a, index_scores(a), AllocationOptions(ratio=0.3))
    assert [removed_count(al, g) for g in (g10, g7, g16)] == [3, 2, 4]  # 0.3*10 is 3, not 2.9999
    np.testing.assert_array_equal(al.kept[g10], np.arange(3, 10))


def test_lowest_scores_go_and_kept_is_sorted(chain8: Analysis) -> None:
    gid = ids(chain8, 1)[0]
    scores = index_scores(chain8)
    scores[gid] = np.array([5.0, 0.1, 7, 0.3, 9, 0.2, 8, 6])
    al = allocate(chain8, scores, AllocationOptions(ratio=0.375))
    np.testing.assert_array_equal(al.kept[gid], [0, 2, 4, 6, 7])


def test_ties_are_broken_by_unit_index_and_results_repeat(chain8: Analysis) -> None:
    gid = ids(chain8, 1)[0]
    scores = {g: np.ones(8) for g in ids(chain8, 3)}
    scores[gid] = np.array([1.0, 1, 0, 1, 1, 0, 1, 1])
    opts = AllocationOptions(ratio=0.5, global_ranking=True)
    first = allocate(chain8, scores, opts)
    np.testing.assert_array_equal(allocate(chain8, scores, AllocationOptions(ratio=0.5)).kept[gid], [3, 4, 6, 7])
    second = allocate(chain8, scores, opts)
    assert first.kept.keys() == second.kept.keys()
    for g in first.kept:
        np.testing.assert_array_equal(first.kept[g], second.kept[g])


def test_ratio_zero_prunes_nothing_and_records_why(chain8: Analysis) -> None:
    al = allocate(chain8, {})
    assert al.kept == {}
    assert al.macs == al.dense_macs and al.params == al.dense_params
    for gid in ids(chain8, 3):
        assert al.decisions[gid].skipped == "ratio 0"
        np.testing.assert_array_equal(al.kept_units(gid), np.arange(8))


def test_frozen_groups_are_recorded_as_skipped(chain8: Analysis) -> None:
    al = allocate(chain8, index_scores(chain8), AllocationOptions(ratio=0.5))
    frozen = [g for g in chain8.groups if g.frozen]
    assert frozen
    for g in frozen:
        d = al.decisions[g.id]
        assert d.skipped is not None and d.skipped.startswith("frozen: graph")
        assert d.units_after == d.units_before and g.id not in al.kept


# caps -------------------------------------------------------------------------------------------
def test_max_ratio_caps_every_group(chain8: Analysis) -> None:
    al = allocate(chain8, index_scores(chain8), AllocationOptions(ratio=0.95, max_ratio=0.5))
    assert [removed_count(al, g) for g in ids(chain8, 3)] == [4, 4, 4]


def test_never_empty_a_group() -> None:
    a = analyze(chain_model((2, 3)))
    al = allocate(a, index_scores(a), AllocationOptions(ratio=0.99, max_ratio=1.0))
    assert [al.decisions[g].units_after for g in ids(a, 2)] == [1, 1]


# global ranking ---------------------------------------------------------------------------------
# Unit weights (parameters per unit): group 1: W1 row 3 + b1 1 + W2 column 8 = 12;
# group 2: 8 + 1 + 8 = 17; group 3: 8 + 1 + 2 = 11.  Total 8 * 40 = 320.
GLOBAL_SCORES = (
    [0.10, 0.80, 0.81, 0.82, 0.83, 0.84, 0.85, 0.86],
    [0.90, 0.20, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96],
    [0.97, 0.98, 0.30, 0.99, 1.00, 1.01, 1.02, 1.03],
)


def _global_scores(a: Analysis) -> dict[int, np.ndarray]:
    return {gid: np.array(s) for gid, s in zip(ids(a, 3), GLOBAL_SCORES, strict=True)}


@pytest.mark.parametrize(
    ("ratio", "removed"),
    [
        (0.1, [[0], [1], [2]]),  # budget 32: 12, 29, 40 >= 32
        (0.15, [[0, 1], [1], [2]]),  # budget 48: ... 40, 52 >= 48
    ],
)
def test_global_ranking_removes_the_lowest_until_the_budget(
    chain8: Analysis, ratio: float, removed: list[list[int]]
) -> None:
    al = allocate(chain8, _global_scores(chain8), AllocationOptions(ratio=ratio, global_ranking=True))
    for gid, rem in zip(ids(chain8, 3), removed, strict=True):
        np.testing.assert_array_equal(al.kept[gid], np.setdiff1d(np.arange(8), rem))


def test_global_ranking_respects_max_ratio(chain8: Analysis) -> None:
    g1, g2, g3 = ids(chain8, 3)
    scores = {g1: np.arange(8) * 0.01, g2: 1 + np.arange(8.0), g3: 10 + np.arange(8.0)}
    al = allocate(chain8, scores, AllocationOptions(ratio=0.2, global_ranking=True, max_ratio=0.5))
    # budget 64: group 1 stops at its cap of 4 units (48), then one unit of group 2 (65 >= 64)
    assert [removed_count(al, g) for g in (g1, g2, g3)] == [4, 1, 0]
    assert al.decisions[g3].skipped == "no unit ranked low enough"
    al = allocate(chain8, scores, AllocationOptions(ratio=0.2, global_ranking=True, max_ratio=0.25))
    # caps of 2: 24 from group 1, 34 from group 2 (58), then the lowest of group 3 (69 >= 64)
    assert [removed_count(al, g) for g in (g1, g2, g3)] == [2, 2, 1]
    np.testing.assert_array_equal(al.kept[g3], np.arange(1, 8))


# rounding ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "r", "expected"),
    [(16, 4, 4), (16, 6, 4), (16, 13, 12), (10, 5, 2), (10, 1, 0), (16, 0, 0), (3, 2, 2)],
)
def test_round_removal_keeps_multiples_rounded_up(n: int, r: int, expected: int) -> None:
    assert round_removal(n, r, 4) == expected


def test_round_to_keeps_multiples_never_below_n_and_leaves_small_groups() -> None:
    a = analyze(chain_model((16, 10, 3)))
    g16, g10, g3 = ids(a, 3)
    kept = {r: allocate(a, index_scores(a), AllocationOptions(ratio=r, round_to=4)) for r in (0.3, 0.5, 0.85)}
    assert [kept[r].decisions[g16].units_after for r in (0.3, 0.5, 0.85)] == [12, 8, 4]
    assert kept[0.5].decisions[g10].units_after == 8
    for al in kept.values():
        assert al.decisions[g3].units_after == 3
        assert "round_to=4" in (al.decisions[g3].skipped or "")
        for d in al.decisions.values():
            if d.removed:
                assert d.units_after % 4 == 0 and d.units_after >= 4
    small = allocate(a, index_scores(a), AllocationOptions(ratio=0.5, round_to=4, round_small=True))
    assert small.decisions[g3].units_after == 2  # pruned by the ratio, without rounding


def test_round_to_that_cannot_be_met_leaves_the_group() -> None:
    a = analyze(chain_model((10,)))
    (g10,) = ids(a, 1)
    al = allocate(a, index_scores(a), AllocationOptions(ratio=0.1, round_to=4))
    assert al.decisions[g10].units_after == 10 and "round_to=4" in (al.decisions[g10].skipped or "")


# patterns ---------------------------------------------------------------------------------------
def test_ignore_by_node_name_leaves_every_group_of_that_node(chain8: Analysis) -> None:
    g1, g2, g3 = ids(chain8, 3)
    al = allocate(chain8, index_scores(chain8), AllocationOptions(ratio=0.5, ignore=("conv2", "nomatch*")))
    # conv2 reads group 1's channels and writes group 2's: both are left alone
    assert [removed_count(al, g) for g in (g1, g2, g3)] == [0, 0, 4]
    assert al.decisions[g1].skipped == "ignored (pattern 'conv2')"
    assert al.warnings == ["ignore pattern 'nomatch*' matched no node or tensor of any group"]


def test_ignore_by_tensor_pattern(chain8: Analysis) -> None:
    g1, g2, g3 = ids(chain8, 3)
    al = allocate(chain8, index_scores(chain8), AllocationOptions(ratio=0.5, ignore=("b3",)))
    assert [removed_count(al, g) for g in (g1, g2, g3)] == [4, 4, 0]
    assert al.warnings == []


def test_ratio_for_overrides_first_match_wins(chain8: Analysis) -> None:
    g1, g2, g3 = ids(chain8, 3)
    opts = AllocationOptions(ratio=0.25, ratio_for=(("b1", 0.5), ("W*", 0.75), ("zzz", 0.1)))
    al = allocate(chain8, index_scores(chain8), opts)
    # group 1 matches b1 first; groups 2 and 3 hold W2/W3 and get 0.75
    assert [removed_count(al, g) for g in (g1, g2, g3)] == [4, 6, 6]
    assert al.decisions[g1].ratio == 0.5
    assert al.warnings == ["ratio_for pattern 'zzz' matched no node or tensor of any group"]


# lossy ------------------------------------------------------------------------------------------
def _layernorm_model() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
        helper.make_node("LayerNormalization", ["h", "s", "b"], ["n"], name="ln", axis=-1),
        helper.make_node("MatMul", ["n", "W2"], ["y"], name="fc2"),
    ]
    inits = {"W1": rng.random((8, 6)), "s": np.ones(6), "b": np.zeros(6), "W2": rng.random((6, 5))}
    return _model(nodes, inits, [2, 4, 8])


def test_lossy_groups_need_allow_lossy() -> None:
    a = analyze(_layernorm_model())
    g = group_of(a, "W1", 1)
    assert g.lossy and not g.frozen
    al = allocate(a, index_scores(a), AllocationOptions(ratio=0.5))
    assert g.id not in al.kept and (al.decisions[g.id].skipped or "").startswith("lossy")
    al = allocate(a, index_scores(a), AllocationOptions(ratio=0.5, allow_lossy=True))
    np.testing.assert_array_equal(al.kept[g.id], [3, 4, 5])


# targets ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chain16() -> Analysis:
    return analyze(chain_model((16, 16, 16)))


def test_cost_of_the_chain_by_hand(chain16: Analysis) -> None:
    # MACs = 16 * (3*16 + 16*16 + 16*16 + 16*2); params = weights + biases
    assert chain16.cost.macs == HW * 592
    assert chain16.cost.params == 592 + 16 * 3 + 2


def test_target_macs_local_hits_the_smallest_ratio(chain16: Analysis) -> None:
    al = allocate(chain16, index_scores(chain16), AllocationOptions(target_macs=0.5))
    # kept k per group costs 16 * (2k^2 + 5k): k = 11 gives 297 > 296, k = 10 gives 250
    assert [al.decisions[g].units_after for g in ids(chain16, 3)] == [10, 10, 10]
    assert al.macs == HW * 250 <= 0.5 * al.dense_macs
    assert (al.macs, al.params) == estimate_cost(chain16, al.kept) == recount(chain16, al.kept)
    assert math.floor(al.ratio * 16 + 1e-9) == 6


@pytest.mark.parametrize("kind", ["macs", "params"])
def test_target_global_is_met_and_close(chain16: Analysis, kind: str) -> None:
    opts = AllocationOptions(global_ranking=True, **{f"target_{kind}": 0.4})  # type: ignore[arg-type]
    scores = {g.id: np.random.default_rng(g.id).random(g.n_units) for g in chain16.groups}
    al = allocate(chain16, scores, opts)
    value, dense = (al.macs, al.dense_macs) if kind == "macs" else (al.params, al.dense_params)
    assert 0.35 * dense < value <= 0.4 * dense
    assert (al.macs, al.params) == estimate_cost(chain16, al.kept) == recount(chain16, al.kept)
    less = allocate(chain16, scores, AllocationOptions(ratio=max(al.ratio - 0.01, 0.0), global_ranking=True))
    assert (less.macs if kind == "macs" else less.params) > 0.4 * dense


def test_target_unreachable_says_the_best_reachable(chain16: Analysis) -> None:
    # at most 14 of 16 units go (max_ratio 0.9): 16 * (2*4 + 10) = 288 MACs, 0.0304 of dense
    with pytest.raises(TargetUnreachableError, match=r"leaves 0\.0304 of dense macs \(288 of 9472\)"):
        allocate(chain16, index_scores(chain16), AllocationOptions(target_macs=0.01))
    assert issubclass(TargetUnreachableError, UsageError)


def test_target_of_one_prunes_nothing(chain16: Analysis) -> None:
    al = allocate(chain16, index_scores(chain16), AllocationOptions(target_params=1.0))
    assert al.kept == {} and al.ratio == 0.0


# estimate_cost ----------------------------------------------------------------------------------
def test_estimate_cost_by_hand(chain8: Analysis) -> None:
    g1, g2, g3 = ids(chain8, 3)
    kept = {g1: np.array([0, 1, 2, 3, 4, 5]), g3: np.array([7])}
    # widths 6, 8, 1: MACs 16 * (3*6 + 6*8 + 8*1 + 1*2); params (18+6) + (48+8) + (8+1) + (2+2)
    assert estimate_cost(chain8, kept) == (HW * 76, 93) == recount(chain8, kept)


def test_estimate_cost_with_a_shared_concat_space() -> None:
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Conv", ["x", "Wa"], ["a"], name="ca", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "Wb"], ["b"], name="cb"),
        helper.make_node("Concat", ["a", "b"], ["c"], name="cat", axis=1),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "Wc"], ["y"], name="cc"),
    ]
    inits = {"Wa": rng.random((4, 3, 3, 3)), "Wb": rng.random((6, 3, 1, 1)), "Wc": rng.random((2, 10, 1, 1))}
    a = analyze(_model(nodes, inits, ["N", 3, 5, 5]))
    ga, gb = group_of(a, "Wa"), group_of(a, "Wb")
    assert Space("c", 1) in ga.indices and Space("c", 1) in gb.indices
    kept = {ga.id: np.array([1, 3]), gb.id: np.array([0, 2, 4])}
    # Wc keeps 5 of 10 input channels: 25 * (2*27 + 3*3 + 2*5) MACs, 2*27 + 3*3 + 2*5 params
    assert estimate_cost(a, kept) == (25 * 73, 73) == recount(a, kept)
    al = allocate(a, {ga.id: np.array([0.0, 5, 0, 5]), gb.id: np.array([1.0, 0, 1, 0, 1, 0])},
                  AllocationOptions(ratio=0.5))
    assert {g: k.tolist() for g, k in al.kept.items()} == {ga.id: [1, 3], gb.id: [0, 2, 4]}
    assert (al.macs, al.params) == (25 * 73, 73)


def test_estimate_cost_rejects_bad_units(chain8: Analysis) -> None:
    with pytest.raises(UsageError):
        estimate_cost(chain8, {ids(chain8, 1)[0]: np.array([0, 8])})
    with pytest.raises(UsageError):
        estimate_cost(chain8, {999: np.array([0])})


# option validation ------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), -0.1, 1.0, 2, float("inf")])
def test_bad_ratios_are_usage_errors(bad: float) -> None:
    with pytest.raises(UsageError, match="ratio"):
        AllocationOptions(ratio=bad)
    with pytest.raises(UsageError, match="ratio for 'conv1'"):
        AllocationOptions(ratio_for=(("conv1", bad),))


@pytest.mark.parametrize(
    "opts",
    [
        {"max_ratio": 1.5},
        {"max_ratio": float("nan")},
        {"target_macs": 0.0},
        {"target_params": 1.5},
        {"target_macs": float("nan")},
        {"target_macs": 0.5, "target_params": 0.5},
        {"target_macs": 0.5, "ratio": 0.2},
        {"round_to": 0},
        {"round_to": 2.0},
        {"round_to": True},
    ],
)
def test_bad_options_are_usage_errors(opts: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        AllocationOptions(**opts)  # type: ignore[arg-type]


def test_missing_or_malformed_scores_are_usage_errors(chain8: Analysis) -> None:
    g1 = ids(chain8, 1)[0]
    scores = index_scores(chain8)
    del scores[g1]
    with pytest.raises(UsageError, match=f"no importance scores for group {g1}"):
        allocate(chain8, scores, AllocationOptions(ratio=0.5))
    scores[g1] = np.zeros(3)
    with pytest.raises(UsageError, match="8 finite numbers"):
        allocate(chain8, scores, AllocationOptions(ratio=0.5, global_ranking=True))
