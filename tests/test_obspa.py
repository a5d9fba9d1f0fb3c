"""OBSPA: the algebra on small random problems, im2col statistics against ONNX Runtime, and shrink
end to end (weights rewritten, biases added or updated, proof against the updated masked reference)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import graphprune
from graphprune.analysis import analyze
from graphprune.cli import cli
from graphprune.errors import UsageError
from graphprune.graph import GraphView
from graphprune.hessian import (
    collect_stats,
    describe_consumer,
    feature_rows,
    find_consumers,
    session_with_outputs,
)
from graphprune.norm_priors import bn_prior_stats
from graphprune.obspa import (
    damped,
    greedy_order,
    obs_remove,
    order_scores,
    refit,
    saliency,
)
from graphprune.priors import (
    balanced_confident,
    family_samples,
    natural_feeds,
    signal,
    to_range,
    token_table,
)
from graphprune.verify import consumer_zeroing, masked_reference
from tests.graphs import G

RNG = np.random.default_rng(7)


def _problem(out: int = 5, d: int = 12, n: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    w = RNG.standard_normal((out, d))
    x = RNG.standard_normal((d, n)) + RNG.standard_normal((d, 1))  # correlated features with means
    x[3] = 0.6 * x[1] + 0.4 * x[3]
    return w, x, x @ x.T


# algebra -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("q", [[4], [2, 7], [0, 5, 6, 9]])
def test_predicted_loss_equals_measured_error(q):
    w, x, h = _problem()
    hinv = np.linalg.inv(h)
    q = np.asarray(q)
    predicted = saliency(w, hinv, q[None, :])[0]
    w_new, hinv_new = w.copy(), hinv.copy()
    obs_remove(w_new, hinv_new, q)
    measured = float(np.square(w @ x - w_new @ x).sum())
    assert np.allclose(2.0 * predicted, measured, rtol=1e-9)
    assert np.all(w_new[:, q] == 0)


@pytest.mark.parametrize("q", [[4], [2, 7], [0, 5, 6, 9]])
def test_update_is_least_squares_refit_of_kept_columns(q):
    w, x, h = _problem()
    keep = np.setdiff1d(np.arange(h.shape[0]), q)
    w_obs, hinv = w.copy(), np.linalg.inv(h)
    obs_remove(w_obs, hinv, np.asarray(q))
    lstsq = np.linalg.lstsq(x[keep].T, (w @ x).T, rcond=None)[0].T  # argmin ||WX - W_K X_K||
    assert np.allclose(w_obs[:, keep], lstsq, atol=1e-9)
    assert np.allclose(refit(w, h, keep), w_obs, atol=1e-9)


def test_sequential_removal_equals_joint_and_downdate_is_inverse_of_kept_block():
    w, _, h = _problem(d=10)
    hd = damped(h, 0.01 * float(np.diag(h).mean()))
    w_seq, hinv_seq = w.copy(), np.linalg.inv(hd)
    for q in ([1], [6], [3]):
        obs_remove(w_seq, hinv_seq, np.asarray(q))
    w_joint, hinv_joint = w.copy(), np.linalg.inv(hd)
    obs_remove(w_joint, hinv_joint, np.asarray([1, 3, 6]))
    keep = np.setdiff1d(np.arange(10), [1, 3, 6])
    assert np.allclose(w_seq, w_joint, atol=1e-10)
    assert np.allclose(hinv_seq[np.ix_(keep, keep)], np.linalg.inv(hd[np.ix_(keep, keep)]), atol=1e-10)
    assert np.allclose(refit(w, hd, keep), w_seq, atol=1e-10)


def test_bias_column_compensates_the_mean():
    """With a constant-1 column kept, removing a constant channel costs nothing: its mean moves to the bias."""
    n = 300
    x = np.vstack([RNG.standard_normal((3, n)), np.full((1, n), 2.5), np.ones((1, n))])
    w = RNG.standard_normal((4, 5))
    w[:, -1] = 0.0
    new = refit(w, x @ x.T, np.array([0, 1, 2, 4]))
    assert np.allclose(new @ x, w @ x, atol=1e-9)
    assert np.allclose(new[:, -1], 2.5 * w[:, 3])


def test_order_scores_are_strictly_increasing_along_the_order():
    order = np.array([3, 0, 4])
    s = order_scores(6, order, np.array([0.2, 0.1, 0.5]))
    assert s[3] < s[0] < s[4] < min(s[1], s[2], s[5])


# statistics --------------------------------------------------------------------------------------
def _conv_net(bias: bool = True, stride: int = 1, dilation: int = 1, pads: int = 1) -> onnx.ModelProto:
    g = G()
    y = g.op("Relu", g.conv("x", 3, 6, 3))
    w = g.const(RNG.standard_normal((5, 6, 3, 3)).astype(np.float32))
    ins = [y, w] + ([g.const(RNG.standard_normal(5).astype(np.float32), "b")] if bias else [])
    z = g.op("Conv", *ins, strides=[stride, stride], dilations=[dilation, dilation], pads=[pads] * 4)
    return g.build({"x": ["N", 3, 9, 9]}, [z])


@pytest.mark.parametrize("stride,dilation,pads", [(1, 1, 1), (2, 1, 0), (1, 2, 2)])
def test_im2col_rows_reproduce_the_conv(stride, dilation, pads):
    """W · features + b at the sampled positions equals the Conv output (checks layout and padding)."""
    model = _conv_net(stride=stride, dilation=dilation, pads=pads)
    a = analyze(model)
    (c,) = [c for c in find_consumers(a).values() if c.op == "Conv" and c.n_in == 6]
    x = RNG.standard_normal((2, 3, 9, 9)).astype(np.float32)
    mid, out = session_with_outputs(model, a.view, [c.x]).run([c.x, a.view.graph_outputs[0]], {"x": x})
    rows = feature_rows(c, mid, 10**6, np.random.default_rng(0))(0, c.n_in)
    y = rows.astype(np.float64) @ c.matrix(a.view).T + c.bias_vector(a.view)
    expected = out.transpose(0, 2, 3, 1).reshape(-1, c.n_out)
    assert np.allclose(y, expected, atol=1e-4)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_im2col_rows_1d_conv_with_auto_pad(auto_pad):
    g = G()
    y = g.op("Relu", g.op("Conv", "x", g.const(RNG.standard_normal((6, 2, 3)).astype(np.float32))))
    w = g.const(RNG.standard_normal((4, 6, 4)).astype(np.float32))
    z = g.op("Conv", y, w, strides=[2], auto_pad=auto_pad)
    model = g.build({"x": ["N", 2, 11]}, [z])
    a = analyze(model)
    (c,) = [c for c in find_consumers(a).values() if c.weight == w]
    x = RNG.standard_normal((2, 2, 11)).astype(np.float32)
    mid, out = session_with_outputs(model, a.view, [c.x]).run([c.x, z], {"x": x})
    rows = feature_rows(c, mid, 10**6, np.random.default_rng(0))(0, c.n_in)
    assert np.allclose(rows.astype(np.float64) @ c.matrix(a.view).T, out.transpose(0, 2, 1).reshape(-1, 4), atol=1e-4)


def test_collected_h_matches_direct_moments_and_blocks():
    model = _conv_net()
    a = analyze(model)
    cons = [c for c in find_consumers(a).values() if c.n_in == 6]
    feeds = [{"x": RNG.standard_normal((2, 3, 9, 9)).astype(np.float32)} for _ in range(2)]
    full = collect_stats(a.view, cons, feeds, "test", max_block=10**6, max_rows=10**6, seed=0)[0]
    blocked = collect_stats(a.view, cons, feeds, "test", max_block=20, max_rows=10**6, seed=0)[0]
    assert len(full.blocks) == 1 and len(blocked.blocks) == 3  # 6 channels x 9 features, <= 20 per block
    assert full.rows == 2 * 2 * 81 and np.isclose(full.h[0][-1, -1], 1.0)  # E[1·1] = 1
    for (c0, c1), hb in zip(blocked.blocks, blocked.h, strict=True):
        cols = np.r_[c0 * 9:c1 * 9, 54]
        assert np.allclose(hb, full.h[0][np.ix_(cols, cols)], rtol=1e-5, atol=1e-6)


def test_bn_prior_uses_batchnorm_moments_and_reports_missing_bn():
    g = G()
    h = g.op("Relu", g.bn(g.conv("x", 3, 4, 3, bias=False), 4))
    rz = g.op("Relu", g.conv(h, 4, 5, 1))
    model = g.build({"x": ["N", 3, 8, 8]}, [g.conv(rz, 5, 2, 1)])
    a = analyze(model)
    by_x = {c.x: c for c in find_consumers(a).values()}
    st = bn_prior_stats(by_x[h], a.view, 1024)
    assert st is not None and st.mode == "bn-prior"
    bn = [n for n in model.graph.node if n.op_type == "BatchNormalization"][0]
    gamma, beta = (numpy_helper.to_array(t) for t in model.graph.initializer if t.name in bn.input[1:3])
    mu, sd = beta.astype(np.float64), np.abs(gamma.astype(np.float64))
    from math import erf, exp, pi, sqrt

    phi = np.array([exp(-0.5 * (m / s) ** 2) / sqrt(2 * pi) for m, s in zip(mu, sd, strict=True)])
    cdf = np.array([0.5 * (1 + erf(m / s / sqrt(2))) for m, s in zip(mu, sd, strict=True)])
    mean = mu * cdf + sd * phi  # rectified Gaussian
    assert np.allclose(st.h[0][-1, :-1], mean, rtol=1e-4)
    assert bn_prior_stats(by_x[rz], a.view, 1024) is None  # Relu(Conv): no BN in front


# greedy selection ----------------------------------------------------------------------------------
SEED = 0


def test_greedy_prefers_the_redundant_channel():
    """A channel that is a copy of another costs nothing once OBS moves it onto its twin."""
    g = G()
    x = g.conv("x", 3, 4, 1)
    w2 = g.const(RNG.standard_normal((3, 4, 1, 1)).astype(np.float32))
    y = g.op("Conv", x, w2)
    model = g.build({"x": ["N", 3, 5, 5]}, [y])
    rng = np.random.default_rng(SEED)  # own weights: the shared RNGs' state depends on test order
    w1 = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    w1[2] = 3.0 * w1[0]  # channel 2 = 3 x channel 0 (before the bias)
    b1 = rng.standard_normal(4).astype(np.float32)
    b1[2] = 3.0 * b1[0]
    for k, v in enumerate((w1, b1, rng.standard_normal((3, 4, 1, 1)).astype(np.float32))):
        model.graph.initializer[k].CopyFrom(numpy_helper.from_array(v, model.graph.initializer[k].name))
    r = graphprune.shrink(model, ratio=0.25, method="obspa", stats="synthetic", samples=16, write=False, output="x")
    kept = r.plan.keep[[s for s in r.plan.keep if s.tensor == w2 and s.axis == 1][0]]
    assert 0 in kept and 2 not in kept or 2 in kept and 0 not in kept
    # the twin absorbs the removed channel: the outputs barely move (up to the damping's shrinkage)
    xs = np.random.default_rng(100).standard_normal((64, 3, 5, 5)).astype(np.float32)
    dense, pruned = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                     .run(None, {"x": xs})[0] for m in (model, r.model))
    assert np.square(dense - pruned).sum() < 0.02 * np.square(dense - dense.mean(axis=0)).sum()


def test_greedy_order_length_and_distinct():
    model = _conv_net()
    a = analyze(model)
    (key, c), = [(k, c) for k, c in find_consumers(a).items() if c.n_in == 6]
    st = collect_stats(a.view, [c], [{"x": RNG.standard_normal((4, 3, 9, 9)).astype(np.float32)}], "t",
                       max_block=1024, max_rows=4096, seed=0)[0]
    from graphprune.obspa import ConsumerState

    cs = ConsumerState.build(c, st, c.matrix(a.view), 0.01)
    (group,) = [gr for gr in a.groups if key[1] in gr.indices]
    order, inc = greedy_order(group, [(key[1], cs)], 4, rounds=2)
    assert len(order) == 4 and len(set(order.tolist())) == 4 and np.all(inc >= 0)


# shrink end to end ----------------------------------------------------------------------------------
def _mlp(matmul_bias: bool = True) -> onnx.ModelProto:
    g = G()
    h = g.op("Relu", g.linear("x", 6, 8))
    y = g.linear(h, 8, 4, bias=matmul_bias)
    return g.build({"x": ["N", 3, 6]}, [y])


def _gemm_net() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    inits = [numpy_helper.from_array(RNG.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (8, 6)), ("b1", (8,)), ("w2", (8, 3)))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, alpha=0.5),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["y"], alpha=2.0, beta=0.5)]
    graph = helper.make_graph(nodes, "gemm", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("stats", ["synthetic", "natural", "bn-prior"])
def test_shrink_conv_adds_bias_and_proves(stats):
    model = _conv_net(bias=False)
    r = graphprune.shrink(model, ratio=0.5, method="obspa", stats=stats, samples=16, write=False, output="x")
    assert r.verify is not None and r.verify.passed and r.verify.exact
    (rec,) = r.obspa.consumers
    assert rec.bias.startswith("added") and rec.kept == 3
    last = [n for n in r.model.graph.node if n.op_type == "Conv"][-1]
    assert len(last.input) == 3
    rep = r.report()
    assert rep["method"] == "obspa" and rep["obspa"]["consumers"][0]["stats"] in ("synthetic", "natural",
                                                                                    "natural (no BN in front)")
    assert "obspa" in r.summary().splitlines()[-1]


def test_shrink_matmul_updates_the_add_constant():
    r = graphprune.shrink(_mlp(), ratio=0.5, method="obspa", stats="synthetic", samples=32, write=False,
                          output="x")
    (rec,) = r.obspa.consumers
    assert rec.bias.startswith("updated") and r.verify.passed


def test_shrink_matmul_without_bias_slot_says_so():
    r = graphprune.shrink(_mlp(matmul_bias=False), ratio=0.5, method="obspa", stats="synthetic", samples=32,
                          write=False, output="x")
    (rec,) = r.obspa.consumers
    assert rec.bias.startswith("none") and "no mean compensation" in rec.bias and r.verify.passed


def test_shrink_gemm_alpha_beta_and_added_c():
    r = graphprune.shrink(_gemm_net(), ratio=0.5, method="obspa", stats="synthetic", samples=64, write=False,
                          output="x")
    (rec,) = r.obspa.consumers
    assert rec.bias.startswith("added") and r.verify.passed
    gemm = [n for n in r.model.graph.node if n.op_type == "Gemm"][-1]
    assert len(gemm.input) == 3


def test_calib_stats_refit_beats_slicing_the_same_channels(tmp_path):
    """With H from the very inputs it is judged on, the refit output is closer to the dense output
    than the masked original (the same channels removed, nothing moved)."""
    model = _conv_net()
    x = RNG.standard_normal((16, 3, 9, 9)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x)
    r = graphprune.shrink(model, ratio=0.5, method="obspa", calib=str(tmp_path / "c.npz"), write=False, output="x")
    assert r.obspa.stats == "calib" and r.obspa.consumers[0].stats == "calib"
    consumers = {p.space for g in r.analysis.groups for p in g.params if p.role == "in"}
    masked = masked_reference(model, consumer_zeroing(r.plan.keep, r.plan.sizes, consumers))

    def run(m: onnx.ModelProto) -> np.ndarray:
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    dense = run(model)
    err_obspa = float(np.square(run(r.model) - dense).mean())
    err_slice = float(np.square(run(masked) - dense).mean())
    assert err_obspa < 0.9 * err_slice


def test_unsupported_consumer_falls_back_to_identity():
    g = G()
    y = g.op("Relu", g.conv("x", 3, 8, 1))
    w = g.const(RNG.standard_normal((8, 2, 3, 3)).astype(np.float32))
    z = g.op("ConvTranspose", y, w, strides=[2, 2])
    model = g.build({"x": ["N", 3, 5, 5]}, [z])
    a = analyze(model)
    (c,) = find_consumers(a).values()
    assert c.unsupported and c.matrix(a.view).shape == (2 * 9, 8)
    r = graphprune.shrink(model, ratio=0.5, method="obspa", stats="synthetic", samples=8, write=False, output="x")
    assert r.obspa.consumers[0].stats == "identity" and r.verify.passed


def test_magnitude_rejects_obspa_options_and_bad_stats():
    with pytest.raises(UsageError, match="--method obspa"):
        graphprune.shrink(_mlp(), ratio=0.5, stats="synthetic", write=False, output="x")
    with pytest.raises(UsageError, match="unknown --stats"):
        graphprune.shrink(_mlp(), ratio=0.5, method="obspa", stats="nope", write=False, output="x")
    with pytest.raises(UsageError, match="needs --calib"):
        graphprune.shrink(_mlp(), ratio=0.5, method="obspa", stats="calib", write=False, output="x")


def test_describe_consumer_shared_weight_is_identity():
    g = G()
    w = g.const(RNG.standard_normal((4, 4)).astype(np.float32))
    a1 = g.op("MatMul", g.op("Relu", g.linear("x", 4, 4)), w)
    a2 = g.op("MatMul", a1, w)
    model = g.build({"x": ["N", 4]}, [a2])
    view = GraphView(model)
    from graphprune.rules import Space

    i = [k for k, n in enumerate(view.nodes) if n.op_type == "MatMul" and n.input[1] == w][0]
    assert "shared" in (describe_consumer(view, i, Space(w, 0)).unsupported or "")


# priors ------------------------------------------------------------------------------------------------
def test_prior_families_ranges_and_signals():
    rng = np.random.default_rng(0)
    for fam in ("smooth2", "smooth4", "blobs", "blobs-inv", "mix"):
        u = family_samples(rng, fam, 6, 3, 16, 20)
        assert u.shape == (6, 3, 16, 20) and u.min() >= 0 and u.max() <= 1
    s = to_range(family_samples(rng, "mix", 8, 1, 8, 8), "standard")
    assert abs(s.mean()) < 1e-6 and abs(s.std() - 1) < 1e-3
    onehot = np.eye(4)[[0, 1, 2, 3]]
    assert signal(onehot) == pytest.approx(1.0)
    assert signal(np.eye(4)[[0, 0, 0, 0]]) == pytest.approx(0.25)
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    assert balanced_confident(probs, 2).tolist() == [0, 3]


# CLI -------------------------------------------------------------------------------------------------
def test_cli_shrink_obspa_report(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(_conv_net(bias=False), src)
    report = tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["shrink", str(src), "--ratio", "0.5", "--method", "obspa", "--stats",
                                   "synthetic", "--samples", "8", "--report", str(report), "-o",
                                   str(tmp_path / "o.onnx")])
    assert res.exit_code == 0, res.output
    assert "obspa  --stats synthetic" in res.output
    doc = json.loads(report.read_text())
    assert doc["obspa"]["consumers"][0]["bias"].startswith("added")
    plan = tmp_path / "p.json"
    res = CliRunner().invoke(cli, ["shrink", str(src), "--ratio", "0.5", "--method", "obspa", "--stats",
                                   "synthetic", "--samples", "8", "--plan", str(plan), "-o",
                                   str(tmp_path / "o2.onnx")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["apply-plan", str(src), str(plan), "-o", str(tmp_path / "o3.onnx")])
    assert res.exit_code == 2 and "method obspa" in res.output


@pytest.mark.parametrize("budget", [0.0, 1e18])
def test_propagation_switch_and_proof(monkeypatch, budget, tmp_path):
    """Refitting in graph order on the pruned model's inputs (or not) still proves exactly."""
    import graphprune.obspa_rewrite as rw

    monkeypatch.setattr(rw, "PROPAGATE_BUDGET", budget)
    g = G()
    h = g.op("Relu", g.conv("x", 3, 8, 3))
    h = g.op("Relu", g.conv(h, 8, 8, 3))
    model = g.build({"x": ["N", 3, 7, 7]}, [g.conv(h, 8, 4, 1)])
    x = RNG.standard_normal((32, 3, 7, 7)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x)
    r = graphprune.shrink(model, ratio=0.5, method="obspa", calib=str(tmp_path / "c.npz"), write=False, output="x")
    assert r.obspa.propagated == (budget > 0) and r.verify.passed
    assert len(r.obspa.consumers) == 2 and r.report()["obspa"]["propagated"] == (budget > 0)
    forced = graphprune.shrink(model, ratio=0.5, method="obspa", calib=str(tmp_path / "c.npz"), write=False,
                               output="x", propagate=budget == 0)
    assert forced.obspa.propagated == (budget == 0) and forced.verify.passed


def _token_model() -> onnx.ModelProto:
    """ids -> Gather(table 3000 x 8) (+ Gather(types 2 x 8)), masked by attention_mask -> MatMul -> Add."""
    emb = numpy_helper.from_array(RNG.standard_normal((3000, 8)).astype(np.float32), "emb")
    typ = numpy_helper.from_array(RNG.standard_normal((2, 8)).astype(np.float32), "typ")
    w = numpy_helper.from_array(RNG.standard_normal((8, 4)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"]),
        helper.make_node("Gather", ["typ", "types"], ["t"]),
        helper.make_node("Add", ["e", "t"], ["et"]),
        helper.make_node("Cast", ["mask"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mf", "ax"], ["mu"]),
        helper.make_node("Mul", ["et", "mu"], ["x"]),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    ax = numpy_helper.from_array(np.array([-1], np.int64), "ax")
    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["N", "S"]) for n in ("ids", "mask", "types")]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", 4])
    graph = helper.make_graph(nodes, "tok", ins, [out], [emb, typ, w, ax])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("example", [None, "framed", "ragged"])
def test_token_prior_makes_sentence_like_feeds(example):
    """Token-id models get log-uniform ids with matching masks and zero type ids, framed like the
    tokenized example when one is given (a 3000-row table is no BERT vocabulary: unframed without)."""
    view = GraphView(_token_model())
    assert token_table(view) == ("ids", 3000)
    like = None
    if example is not None:
        second = [7, 99, 8, 0, 0, 0] if example == "framed" else [9, 99, 8, 0, 0, 0]
        like = {"ids": np.array([[7, 1500, 2000, 40, 8, 0], second], np.int64)}
    feeds, prior = natural_feeds(view, 40, 0, None, like=like)
    assert prior.family == "tokens" and sum(len(f["ids"]) for f in feeds) == 40
    framed = example == "framed"
    assert ("framed 7 ... 8 as in the example inputs" in prior.describe()) == framed
    assert "unframed" in prior.describe() or framed
    sess = ort.InferenceSession(view.model.SerializeToString(), providers=["CPUExecutionProvider"])
    for f in feeds:
        ids, mask = f["ids"], f["mask"]
        assert ids.shape == mask.shape and not f["types"].any()
        lengths = mask.sum(axis=1)
        ends = ids[:, 0], ids[np.arange(len(ids)), lengths - 1]
        assert framed == (bool(np.all(ends[0] == 7)) and bool(np.all(ends[1] == 8)))
        assert np.all((ids == 0) == (mask == 0)) and ids.max() < 3000
        for row, k in zip(ids, lengths, strict=True):
            body = row[1:k - 1] if framed else row[:k]
            assert body.min() >= 3000 // 16
        assert sess.run(None, f)[0].shape == (*ids.shape, 4)


def test_bert_sized_vocabulary_is_framed_with_cls_and_sep():
    from graphprune.priors import _frame

    assert _frame("ids", 30522, None)[0] == (101, 102)
    assert _frame("ids", 50265, None)[0] is None  # RoBERTa-sized: no guess


LN_SEED = 0


def _ln_ffn(decomposed_gelu: bool) -> onnx.ModelProto:
    """x -> LayerNorm(γ, β) -> MatMul + b -> GELU (Erf-decomposed or Gelu op) -> MatMul."""
    g = G(opset=20)
    rng = np.random.default_rng(LN_SEED)  # own weights: the shared RNGs' state depends on test order
    gamma = g.const(rng.uniform(0.5, 1.5, 8).astype(np.float32), "g")
    beta = g.const((0.3 * rng.standard_normal(8)).astype(np.float32), "b")
    n = g.op("LayerNormalization", "x", gamma, beta, axis=-1)
    u = g.op("Add", g.op("MatMul", n, g.const(rng.standard_normal((8, 16)).astype(np.float32))),
             g.const(rng.standard_normal(16).astype(np.float32), "b"))
    if decomposed_gelu:
        e = g.op("Erf", g.op("Div", u, g.const(np.array(np.sqrt(2.0), np.float32), "s")))
        act = g.op("Mul", g.op("Mul", u, g.op("Add", e, g.const(np.array(1.0, np.float32), "one"))),
                   g.const(np.array(0.5, np.float32), "half"))
    else:
        act = g.op("Gelu", u)
    w2 = g.const(rng.standard_normal((16, 4)).astype(np.float32))
    y = g.op("Add", g.op("MatMul", act, w2), g.const(rng.standard_normal(4).astype(np.float32), "b"))
    return g.build({"x": ["N", 5, 8]}, [y])


@pytest.mark.parametrize("decomposed", [True, False])
def test_layernorm_prior_matches_monte_carlo_of_its_own_assumption(decomposed):
    """ln-prior's H equals E[f(u) f(u)ᵀ] for u = n W + b, n ~ N(β, diag γ²): exactly on the diagonal
    and the mean (quadrature), to first order off it."""
    from math import erf

    from graphprune.norm_priors import ln_prior_stats

    model = _ln_ffn(decomposed)
    a = analyze(model)
    (c,) = [c for c in find_consumers(a).values() if c.n_in == 16]
    st = ln_prior_stats(c, a.view, 1024)
    assert st is not None and st.mode == "ln-prior" and st.bias
    h = st.h[0]
    init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    norm = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
    mm = next(n for n in model.graph.node if n.op_type == "MatMul")
    add = next(n for n in model.graph.node if n.op_type == "Add")
    w, b = init[mm.input[1]], init[[i for i in add.input if i in init][0]]
    rng = np.random.default_rng(0)
    samples = rng.standard_normal((400_000, 8)) * np.abs(init[norm.input[1]]) + init[norm.input[2]]
    u = samples @ w + b
    x = 0.5 * u * (1.0 + np.vectorize(erf)(u / np.sqrt(2.0)))
    mc = x.T @ x / len(x)
    np.testing.assert_allclose(h[-1, :-1], x.mean(axis=0), atol=0.01)
    np.testing.assert_allclose(np.diag(h)[:-1], np.diag(mc), rtol=0.02, atol=0.01)
    off = ~np.eye(16, dtype=bool)
    assert np.corrcoef(h[:-1, :-1][off], mc[off])[0, 1] > 0.97


def test_bn_prior_mode_uses_the_layernorm_prior_and_shrinks():
    r = graphprune.shrink(_ln_ffn(True), ratio=0.5, method="obspa", stats="bn-prior", write=False)
    assert r.verify is not None and r.verify.passed
    assert [c.stats for c in r.obspa.consumers] == ["ln-prior"]
