"""Importance criteria on hand-computable weights, normalisers, LAMP, registry and options."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune import importance
from graphprune.analysis import Analysis, analyze
from graphprune.errors import InternalError, UsageError
from graphprune.graph import GraphView
from graphprune.groups import Group
from graphprune.importance import (
    ImportanceOptions,
    NotApplicableError,
    ScoringContext,
    criteria,
    lamp,
    normalize,
    score_groups,
)
from graphprune.rules import Space

RAW = {"normalizer": "none"}


# model builders ---------------------------------------------------------------------------------
def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], x_shape: list[int | str],
           out: str = "y") -> onnx.ModelProto:
    g = helper.make_graph(
        nodes, "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


# W1: unit rows [1,-2], [3,4], [0,0.5]; b1 = [1,0,-2]; W2 column per unit: 2, -1, 0.
W1 = np.array([[1, -2], [3, 4], [0, 0.5]], dtype=np.float64).reshape(3, 2, 1, 1)
B1 = np.array([1, 0, -2], dtype=np.float64)
W2 = np.array([[2, -1, 0]], dtype=np.float64).reshape(1, 3, 1, 1)


def conv_chain(bn_gamma: np.ndarray | None = None) -> onnx.ModelProto:
    """x[N,2,4,4] -> Conv(W1,b1) -> [BN] -> Relu -> Conv(W2) -> y."""
    inits: dict[str, np.ndarray] = {"W1": W1, "b1": B1, "W2": W2}
    nodes = [helper.make_node("Conv", ["x", "W1", "b1"], ["c1"], name="conv1")]
    t = "c1"
    if bn_gamma is not None:
        c = len(bn_gamma)
        inits.update(g=bn_gamma, beta=np.zeros(c), mean=np.zeros(c), var=np.ones(c))
        nodes.append(helper.make_node("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["bn"], name="bn1"))
        t = "bn"
    nodes += [
        helper.make_node("Relu", [t], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2"], ["y"], name="conv2"),
    ]
    return _model(nodes, inits, ["N", 2, 4, 4])


def group_with(a: Analysis, space: Space) -> Group:
    (g,) = [g for g in a.groups if space in g.indices]
    return g


@pytest.fixture(scope="module")
def chain() -> Analysis:
    return analyze(conv_chain())


def scores_of(a: Analysis, g: Group, **opts: object) -> np.ndarray:
    return score_groups(a, ImportanceOptions(**opts), groups=[g]).scores[g.id]  # type: ignore[arg-type]


# magnitude --------------------------------------------------------------------------------------
def test_middle_group_has_the_three_members(chain: Analysis) -> None:
    g = group_with(chain, Space("W1", 0))
    assert g.prunable and g.n_units == 3
    assert {(p.space, p.role) for p in g.params} == {
        (Space("W1", 0), "out"), (Space("b1", 0), "out"), (Space("W2", 1), "in"),
    }


def test_l1_mean_over_members(chain: Analysis) -> None:
    g = group_with(chain, Space("W1", 0))
    # per unit: (|row of W1|_1 + |b1| + |W2 column|_1) / 3
    expected = [(3 + 1 + 2) / 3, (7 + 0 + 1) / 3, (0.5 + 2 + 0) / 3]
    np.testing.assert_allclose(scores_of(chain, g, criterion="l1", **RAW), expected)


def test_l2_mean_over_members(chain: Analysis) -> None:
    g = group_with(chain, Space("W1", 0))
    expected = [(math.sqrt(5) + 1 + 2) / 3, (5 + 0 + 1) / 3, (0.5 + 2 + 0) / 3]
    np.testing.assert_allclose(scores_of(chain, g, criterion="l2", **RAW), expected)


def test_roles_restrict_members_and_reductions(chain: Analysis) -> None:
    g = group_with(chain, Space("W1", 0))
    only_out = scores_of(chain, g, criterion="l1", roles=("out",), reduction="sum", **RAW)
    np.testing.assert_allclose(only_out, [3 + 1, 7 + 0, 0.5 + 2])
    only_in = scores_of(chain, g, criterion="l1", roles=("in",), **RAW)
    np.testing.assert_allclose(only_in, [2, 1, 0])
    mx = scores_of(chain, g, criterion="l1", reduction="max", **RAW)
    np.testing.assert_allclose(mx, [3, 7, 2])


def test_default_normaliser_divides_by_group_mean(chain: Analysis) -> None:
    g = group_with(chain, Space("W1", 0))
    raw = np.array([6, 8, 2.5]) / 3
    res = score_groups(chain, ImportanceOptions(criterion="l1"), groups=[g])
    np.testing.assert_allclose(res.raw[g.id], raw)
    np.testing.assert_allclose(res.scores[g.id], raw / raw.mean())
    assert res.criterion[g.id] == "l1"


def test_default_scores_every_scorable_group_only(chain: Analysis) -> None:
    res = score_groups(chain)
    assert set(res.scores) == {g.id for g in chain.groups if not g.frozen and g.n_units > 1}
    assert set(res.scores) == {group_with(chain, Space("W1", 0)).id}


# fpgm -------------------------------------------------------------------------------------------
def test_fpgm_outlier_scores_highest_and_matches_pairwise_distances() -> None:
    w = np.array([[1.0, 0.0], [1.1, 0.1], [0.9, -0.1], [1.0, 0.05], [10.0, 10.0]], dtype=np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "Wa"], ["a"], name="ca"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "Wb"], ["y"], name="cb"),
    ]
    m = _model(nodes, {"Wa": w.reshape(5, 2, 1, 1), "Wb": np.ones((1, 5, 1, 1))}, [1, 2, 3, 3])
    a = analyze(m)
    g = group_with(a, Space("Wa", 0))
    s = scores_of(a, g, criterion="fpgm", **RAW)
    w64 = w.astype(np.float64)
    expected = [sum(math.dist(w64[u], w64[v]) for v in range(5)) for u in range(5)]
    np.testing.assert_allclose(s, expected, rtol=1e-9)
    assert int(np.argmax(s)) == 4
    assert int(np.argmin(s)) == 3  # (1.0, 0.05) sits at the centre of the cluster


# bn-scale ---------------------------------------------------------------------------------------
def test_bn_scale_uses_abs_gamma() -> None:
    a = analyze(conv_chain(bn_gamma=np.array([0.5, -3.0, 1.0])))
    g = group_with(a, Space("W1", 0))
    np.testing.assert_allclose(scores_of(a, g, criterion="bn-scale", **RAW), [0.5, 3.0, 1.0])


def test_bn_scale_without_bn_falls_back_with_a_warning(chain: Analysis) -> None:
    g = group_with(chain, Space("W1", 0))
    res = score_groups(chain, ImportanceOptions(criterion="bn-scale", normalizer="none"), groups=[g])
    assert res.criterion[g.id] == "l2"
    assert len(res.warnings) == 1 and "BatchNormalization" in res.warnings[0] and "'l2'" in res.warnings[0]
    np.testing.assert_allclose(res.raw[g.id], scores_of(chain, g, criterion="l2", **RAW))


def test_bn_scale_without_bn_and_no_fallback_raises(chain: Analysis) -> None:
    with pytest.raises(NotApplicableError, match="no BatchNormalization"):
        score_groups(chain, ImportanceOptions(criterion="bn-scale", fallback=None))


# activation -------------------------------------------------------------------------------------
def _np_conv1x1(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("nchw,oc->nohw", x, w[:, :, 0, 0]) + b[None, :, None, None]


def test_activation_matches_numpy_recomputation(chain: Analysis) -> None:
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((n, 2, 4, 4)).astype(np.float32)} for n in (1, 3)]
    g = group_with(chain, Space("W1", 0))
    opts = ImportanceOptions(criterion="activation", normalizer="none")
    s = score_groups(chain, opts, feeds=feeds, groups=[g]).raw[g.id]
    x = np.concatenate([f["x"] for f in feeds]).astype(np.float64)
    c1 = _np_conv1x1(x, W1, B1)
    r1 = np.maximum(c1, 0)
    # activation members: conv1 output and relu output; mean |x| over N, H, W then mean over members
    expected = (np.abs(c1).mean(axis=(0, 2, 3)) + np.abs(r1).mean(axis=(0, 2, 3))) / 2
    np.testing.assert_allclose(s, expected, rtol=1e-5)


def test_activation_needs_feeds(chain: Analysis) -> None:
    with pytest.raises(UsageError, match="calibration"):
        score_groups(chain, ImportanceOptions(criterion="activation"))


def test_activation_scores_all_groups_with_one_session(monkeypatch: pytest.MonkeyPatch) -> None:
    a = analyze(conv_chain())
    calls: list[set[Space]] = []
    real = importance.mean_abs_activations

    def spy(view: GraphView, spaces: Iterable[Space], feeds: importance.Feeds) -> dict[Space, np.ndarray]:
        spaces = set(spaces)
        calls.append(spaces)
        return real(view, spaces, feeds)

    monkeypatch.setattr(importance, "mean_abs_activations", spy)
    feeds = [{"x": np.ones((1, 2, 4, 4), np.float32)}]
    groups = [g for g in a.groups if g.n_units > 1]  # includes the frozen input group
    score_groups(a, ImportanceOptions(criterion="activation"), feeds=feeds, groups=groups)
    assert len(calls) == 1
    assert calls[0] == {Space("c1", 1), Space("r1", 1), Space("x", 1)}


# random -----------------------------------------------------------------------------------------
def test_random_is_seeded_per_group(chain: Analysis) -> None:
    g = group_with(chain, Space("W1", 0))
    a1 = scores_of(chain, g, criterion="random", seed=7, **RAW)
    a2 = score_groups(chain, ImportanceOptions(criterion="random", seed=7, normalizer="none")).raw[g.id]
    b = scores_of(chain, g, criterion="random", seed=8, **RAW)
    np.testing.assert_array_equal(a1, a2)
    assert not np.array_equal(a1, b)
    assert a1.shape == (3,) and np.all((a1 >= 0) & (a1 < 1))


# normalisers ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("none", [1, 2, 3, 6]),
        ("mean", [1 / 3, 2 / 3, 1, 2]),
        ("max", [1 / 6, 2 / 6, 3 / 6, 1]),
        ("standard", [(v - 3) / math.sqrt(3.5) for v in (1, 2, 3, 6)]),
    ],
)
def test_normalizers(how: str, expected: list[float]) -> None:
    np.testing.assert_allclose(normalize(np.array([1.0, 2, 3, 6]), how), expected)


@pytest.mark.parametrize("how", ["mean", "max", "standard", "lamp"])
def test_normalizers_of_zero_scores_are_zero(how: str) -> None:
    np.testing.assert_array_equal(normalize(np.zeros(4), how), np.zeros(4))


def test_lamp_hand_numbers_and_ties() -> None:
    np.testing.assert_allclose(lamp(np.array([3.0, 1, 2])), [9 / 9, 1 / 14, 4 / 13])
    np.testing.assert_allclose(lamp(np.array([2.0, 2, 1])), [4 / 8, 4 / 8, 1 / 9])
    np.testing.assert_allclose(normalize(np.array([3.0, 1, 2]), "lamp"), [1, 1 / 14, 4 / 13])


def test_lamp_against_definition() -> None:
    s = np.random.default_rng(3).random(9)
    expected = [v * v / sum(w * w for w in s if w >= v) for v in s]
    np.testing.assert_allclose(lamp(s), expected)


# registry and options ---------------------------------------------------------------------------
def test_builtin_criteria_are_registered() -> None:
    assert {"l1", "l2", "random", "fpgm", "bn-scale", "activation"} <= set(criteria())


def test_a_new_criterion_is_one_function(chain: Analysis) -> None:
    name = "test-unit-index"

    def by_index(group: Group, ctx: ScoringContext) -> np.ndarray:
        return np.arange(group.n_units, dtype=np.float64) + 1

    importance.register_criterion(name)(by_index)
    try:
        g = group_with(chain, Space("W1", 0))
        np.testing.assert_allclose(scores_of(chain, g, criterion=name, normalizer="max"), [1 / 3, 2 / 3, 1])
        with pytest.raises(InternalError, match="twice"):
            importance.register_criterion(name)(by_index)
    finally:
        importance._CRITERIA.pop(name, None)


@pytest.mark.parametrize(
    "opts",
    [
        {"criterion": "l3"},
        {"reduction": "median"},
        {"normalizer": "softmax"},
        {"roles": ("weight",)},
        {"roles": ()},
        {"fallback": "nope"},
    ],
)
def test_bad_options_are_usage_errors(opts: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        ImportanceOptions(**opts)  # type: ignore[arg-type]


def test_same_tensor_in_two_groups_is_scored_on_its_own_axis() -> None:
    # Conv W2 is a member of the middle group on axis 1 and of the output group on axis 0.
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "W3"], ["y"], name="conv3"),
    ]
    w2 = np.arange(6, dtype=np.float64).reshape(2, 3, 1, 1)  # [[0,1,2],[3,4,5]]
    m = _model(nodes, {"W1": np.ones((3, 1, 1, 1)), "W2": w2, "W3": np.ones((1, 2, 1, 1))}, [1, 1, 2, 2])
    a = analyze(m)
    mid, out = group_with(a, Space("W2", 1)), group_with(a, Space("W2", 0))
    assert mid.id != out.id
    np.testing.assert_allclose(scores_of(a, mid, criterion="l1", roles=("in",), **RAW), [3, 5, 7])
    np.testing.assert_allclose(scores_of(a, out, criterion="l1", roles=("out",), **RAW), [3, 12])


# torch ------------------------------------------------------------------------------------------
def test_torch_linear_l2_and_activation_match_torch(tmp_path: object) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3)).eval()
    path = f"{tmp_path}/mlp.onnx"
    torch.onnx.export(net, torch.randn(2, 4), path, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    a = analyze(path)
    (g,) = a.prunable
    assert g.n_units == 6
    w1 = net[0].weight.detach().double().numpy()
    b1 = net[0].bias.detach().double().numpy()
    w2 = net[2].weight.detach().double().numpy()
    expected = (np.linalg.norm(w1, axis=1) + np.abs(b1) + np.linalg.norm(w2, axis=0)) / 3
    np.testing.assert_allclose(scores_of(a, g, criterion="l2", **RAW), expected, rtol=1e-6)

    x = torch.randn(5, 4)
    acts = [n for n in (s.tensor for s in g.spaces) if not a.view.is_constant(n) and not n.startswith("@")]
    with torch.no_grad():
        h = net[0](x).double().numpy()
    per_tensor = {"pre": np.abs(h).mean(axis=0), "post": np.abs(np.maximum(h, 0)).mean(axis=0)}
    expected_act = sum(per_tensor[k] for k in ("pre", "post")) / 2
    assert len(acts) == 2  # the Gemm output and the Relu output
    got = score_groups(a, ImportanceOptions(criterion="activation", normalizer="none"),
                       feeds=[{"x": x.numpy()}]).raw[g.id]
    np.testing.assert_allclose(got, expected_act, rtol=1e-5)


def test_pairwise_fpgm_helper_is_symmetric_distance_sum() -> None:
    x = np.random.default_rng(5).standard_normal((6, 4))
    expected = [math.fsum(math.dist(x[i], x[j]) for j in range(6)) for i in range(6)]
    np.testing.assert_allclose(importance._distance_sums(x), expected, rtol=1e-9)
    np.testing.assert_array_equal(importance._distance_sums(np.ones((3, 2))), np.zeros(3))
