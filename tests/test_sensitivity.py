"""Sensitivity-guided allocation: trials reproduce the real pruned model, scores keep each group's order,
the budget goes where the outputs do not care, kind ratios hold in total, and the CLI reports it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import graphprune
from graphprune.allocation import AllocationOptions, allocate
from graphprune.analysis import analyze
from graphprune.cli import cli
from graphprune.inputs import random_inputs
from graphprune.model_io import load_model
from graphprune.obspa import ObspaOptions, obspa_scores
from graphprune.pruner import masking_spaces
from graphprune.sensitivity import (
    Curve,
    MaskTrial,
    ObspaTrial,
    SensitivityOptions,
    SensitivityReport,
    _weights_as_inputs,
    calibrated_scores,
    measure,
)
from tests.graphs import G

RNG = np.random.default_rng(3)


BLOCKS_SEED = 0


def _two_blocks(quiet: float = 1e-3) -> onnx.ModelProto:
    """x -> z = x + quiet·FFN1(x) -> y = z + FFN2(z): FFN1's 16 hidden units barely reach the output."""
    g = G()
    rng = np.random.default_rng(BLOCKS_SEED)  # own weights: the shared RNGs' state depends on test order

    def linear(x: str, k: int, n: int) -> str:
        w = g.const(rng.standard_normal((k, n)).astype(np.float32))
        return g.op("Add", g.op("MatMul", x, w), g.const(rng.standard_normal(n).astype(np.float32), "b"))

    h1 = g.op("Relu", linear("x", 8, 16))
    y1 = g.op("Mul", linear(h1, 16, 8), g.const(np.array(quiet, np.float32), "s"))
    z = g.op("Add", "x", y1)
    h2 = g.op("Relu", linear(z, 8, 16))
    y = g.op("Add", z, linear(h2, 16, 8))
    return g.build({"x": ["N", 8]}, [y])


def _outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _ffn_groups(analysis) -> list[int]:
    """The two hidden-unit groups, in graph order (first block first)."""
    pos = {n: i for i, n in enumerate(analysis.view.node_names)}
    ffn = [g for g in analysis.groups if g.n_units == 16]
    return [g.id for g in sorted(ffn, key=lambda g: min(pos[n] for n in g.nodes))]


@pytest.mark.parametrize("method", ["magnitude", "obspa"])
def test_trial_values_reproduce_the_pruned_model(method):
    """What a trial feeds equals what shrink writes for the same cut (OBSPA: refitted weights)."""
    model = _two_blocks(quiet=1.0)
    analysis = analyze(load_model(model))
    first, second = _ffn_groups(analysis)
    kw: dict[str, object] = {"method": method}
    if method == "obspa":
        kw.update(stats="synthetic", samples=64, propagate=False)
    name = analysis.groups[first].nodes[0]
    r = graphprune.shrink(model, ratio=0.0, ratio_for=((name, 0.5),), write=False, verify=False, **kw)  # type: ignore[arg-type]
    removed = np.setdiff1d(np.arange(16), r.allocation.kept[first])
    assert removed.size == 8 and second not in r.allocation.kept
    if method == "obspa":
        alloc = AllocationOptions(ratio_for=((name, 0.5),))
        trial = ObspaTrial(analysis, masking_spaces(analysis),
                           obspa_scores(analysis, alloc, ObspaOptions(stats="synthetic", samples=64)))
    else:
        trial = MaskTrial(analysis, masking_spaces(analysis))
    names = trial.tensors(analysis.groups[first])
    values = trial.values({first: removed}, names)
    assert set(values) == names
    feeds = random_inputs(analysis.view, batch=5, seed=1)
    fed = _outputs(_weights_as_inputs(analysis.view.model, analysis.view, names), {**feeds, **values})
    np.testing.assert_allclose(fed, _outputs(r.model, feeds), rtol=1e-4, atol=1e-5)


def test_calibrated_scores_keep_order_and_rank_unmeasured_depth_last():
    analysis = analyze(load_model(_two_blocks()))
    a, b = _ffn_groups(analysis)
    scores = {a: RNG.standard_normal(16), b: RNG.standard_normal(16)}
    report = SensitivityReport(curves={
        a: Curve(np.array([0, 2, 4, 6]), np.array([0.0, 0.1, 0.15, 0.4])),  # concave at first: made monotone
        b: Curve(np.array([0, 4, 8]), np.array([0.0, 0.01, 0.02])),
    })
    out = calibrated_scores(analysis, scores, report)
    for gid, depth in ((a, 6), (b, 8)):
        order = np.argsort(scores[gid], kind="stable")
        s = out[gid][order]
        assert np.all(np.diff(s) > 0), "the group's own removal order must survive"
        assert s[depth:].min() > max(out[a][np.argsort(scores[a])][:6].max(), out[b][np.argsort(scores[b])][:8].max())
    # b's units cost 10x less damage per unit than a's first units: all of b's measured units come first
    ranked = allocate(analysis, out, AllocationOptions(ratio=0.25, global_ranking=True))
    assert ranked.decisions[b].removed == 8 and ranked.decisions[a].removed == 0


def test_budget_goes_to_the_block_the_outputs_ignore():
    model = _two_blocks()
    analysis = analyze(load_model(model))
    quiet, loud = _ffn_groups(analysis)
    sens = graphprune.shrink(model, ratio=0.25, sensitivity=True, write=False)
    plain = graphprune.shrink(model, ratio=0.25, global_ranking=True, write=False)
    assert sens.verify is not None and sens.verify.passed
    assert sens.allocation.decisions[quiet].removed == 8 and sens.allocation.decisions[loud].removed == 0
    assert plain.allocation.decisions[loud].removed > 0  # l2 alone cannot see the 1e-3 scale
    feeds = random_inputs(analysis.view, batch=64, seed=5)
    dense = _outputs(model, feeds)

    def err(m: onnx.ModelProto) -> float:
        return float(np.square(_outputs(m, feeds) - dense).sum() / np.square(dense).sum())

    assert err(sens.model) < 0.1 * err(plain.model)
    curve = sens.sensitivity.curves[quiet]
    assert curve.counts[0] == 0 and curve.damage[0] == 0.0 and curve.counts[-1] == 10  # reach 2.5 x 25% of 16
    assert sens.sensitivity.curves[loud].damage[-1] > 100 * curve.damage[-1]


def test_in_context_curves_start_from_the_background_cut():
    model = _two_blocks(quiet=1.0)
    analysis = analyze(load_model(model))
    a, b = _ffn_groups(analysis)
    scores = {a: np.arange(16.0), b: np.arange(16.0)}
    feeds = [random_inputs(analysis.view, batch=16, seed=2)]
    trial = MaskTrial(analysis, masking_spaces(analysis))
    opts = SensitivityOptions(levels=2)
    alone = measure(analysis, scores, {a: 4}, feeds, trial, opts)
    ctx = measure(analysis, scores, {a: 4}, feeds, trial, opts, background={b: 8})
    assert alone.curves[a].counts.tolist() == [0, 2, 4] and alone.curves[a].damage[0] == 0.0
    assert ctx.curves[a].counts.tolist() == [0, 2, 4] and ctx.curves[a].damage[0] > 0  # b is cut underneath
    assert ctx.trials == 3 and alone.trials == 2


def test_heads_ratio_holds_in_total_across_layers():
    r = graphprune.shrink("models/zoo/bert.onnx", heads=0.25, ratio=0.25, method="obspa", sensitivity=True,
                          write=False)
    assert r.verify is not None and r.verify.passed
    by_kind: dict[str, list[int]] = {"heads": [0, 0], "channels": [0, 0]}
    for d in r.allocation.decisions.values():
        kind = r.analysis.groups[d.group_id].kind
        if d.skipped is None or d.removed or kind == "heads":
            by_kind.setdefault(kind, [0, 0])
            by_kind[kind][0] += d.removed
            by_kind[kind][1] += d.units_before
    heads_removed, heads_total = by_kind["heads"]
    assert heads_removed == heads_total // 4
    rep = r.report()["sensitivity"]
    assert rep["trials"] == sum(len(c["removed"]) - 1 for c in rep["curves"].values())
    assert "sensitivity:" in r.summary()


def test_global_obspa_scores_every_ranked_group():
    """Under global ranking every eligible group gets OBSPA scores (not just those a zero-score
    allocation happened to pick)."""
    r = graphprune.shrink("models/zoo/bert.onnx", ratio=0.25, heads=0.25, method="obspa", global_ranking=True,
                          write=False)
    modes = {g["group"]: g["stats"] for g in r.obspa.groups}
    ranked = [g.id for g in r.analysis.groups if not g.frozen and g.n_units > 1]
    assert ranked and all(modes.get(gid, "").startswith("natural") for gid in ranked)


def test_cli_sensitivity_report_and_refusals(tmp_path):
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["shrink", "models/zoo/small_cnn.onnx", "--ratio", "0.3", "--sensitivity",
                                   "-o", str(out), "--report", str(rep)])
    assert res.exit_code == 0, res.output
    assert "sensitivity:" in res.output and "trials" in res.output
    report = json.loads(rep.read_text())
    assert report["sensitivity"]["curves"] and report["sensitivity"]["inputs"].startswith("data-free prior")
    res = CliRunner().invoke(cli, ["shrink", "models/zoo/small_cnn.onnx", "--target-latency", "1ms",
                                   "--sensitivity", "-o", str(tmp_path / "p.onnx")])
    assert res.exit_code == 2 and "--sensitivity" in res.output


@pytest.mark.parametrize("name,kw", [("bert", {"heads": 0.25, "ratio": 0.25, "method": "obspa"}),
                                     ("resnet18_bn", {"ratio": 0.3}), ("mobilenetv2", {"ratio": 0.3}),
                                     ("resnet18_dynamo", {"ratio": 0.3})])  # BN after Conv: no fusion may eat them
def test_trials_from_cached_activations_equal_full_runs(name, kw, monkeypatch):
    """Running a trial from the first node it changes, on the dense activations before it, gives the
    same damage curves as running the whole model."""
    import graphprune.sensitivity as sens

    path = f"models/zoo/{name}.onnx"
    curves = []
    for cache in (True, False):
        monkeypatch.setattr(sens.SensitivityOptions, "__init__", _with_cache(cache))
        r = graphprune.shrink(path, sensitivity=True, write=False, verify=False, **kw)
        curves.append(r.sensitivity.curves)
    assert curves[0].keys() == curves[1].keys() and curves[0]
    for gid in curves[0]:
        np.testing.assert_array_equal(curves[0][gid].counts, curves[1][gid].counts)
        np.testing.assert_allclose(curves[0][gid].damage, curves[1][gid].damage, rtol=1e-4, atol=1e-9)


def _with_cache(cache: bool):
    original = SensitivityOptions.__init__

    def init(self, *args, **kwargs):
        kwargs.setdefault("cache_prefix", cache)
        original(self, *args, **kwargs)

    return init


def test_sensitivity_without_float_outputs_is_a_usage_error(tmp_path):
    from onnx import TensorProto, helper

    m = onnx.load("models/zoo/small_cnn.onnx")
    out = m.graph.output[0].name
    m.graph.node.append(helper.make_node("ArgMax", [out], ["cls"], axis=1, keepdims=0))
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("cls", TensorProto.INT64, None))
    src = tmp_path / "argmax.onnx"
    onnx.save(m, src)
    res = CliRunner().invoke(cli, ["shrink", str(src), "--ratio", "0.3", "--sensitivity", "-o", str(tmp_path / "o.onnx")])
    assert res.exit_code == 2 and "no" in res.output and "'cls'" in res.output
    assert not (tmp_path / "o.onnx").exists()
