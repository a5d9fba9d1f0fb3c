"""Latency tables: grids, single-op models, lookups, the cost model, calibration and latency targets."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from graphprune.allocation import AllocationOptions, CostModel, TargetUnreachableError, allocate
from graphprune.analysis import analyze
from graphprune.calibrate import calibrate
from graphprune.cli import cli
from graphprune.errors import GraphpruneError, UsageError
from graphprune.graph import GraphView
from graphprune.latency_model import TableLatency
from graphprune.latency_table import LatencyTable, LayerCurve, Staircase
from graphprune.latency_target import parse_latency, shrink_to_latency
from graphprune.layer_shapes import LayerSig, axis_grid, layer_model, model_layers, sig_grid
from graphprune.model_io import load_model
from graphprune.rules import Space
from graphprune.targets import OrtOptions, ProfileOptions, TargetOptions
from models.zoo import ZOO

FAST = ProfileOptions(warmup_s=0.02, iterations=3, duration_s=0.005)
ONE_THREAD = TargetOptions(ort=OrtOptions(intra_op_threads=1))


def synthetic_cnn(width: int = 64, depth: int = 4, size: int = 32, cin: int = 16, seed: int = 0) -> onnx.ModelProto:
    """A plain conv stack (no residuals) whose 3x3 convs dominate its time: one layer shape repeated."""
    rng = np.random.default_rng(seed)
    nodes, inits, x, c = [], [], "input", cin
    for i in range(depth + 1):
        inits += [numpy_helper.from_array((rng.standard_normal((width, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32),
                                          f"conv{i}.w"),
                  numpy_helper.from_array((rng.standard_normal(width) * 0.1).astype(np.float32), f"conv{i}.b")]
        nodes += [helper.make_node("Conv", [x, f"conv{i}.w", f"conv{i}.b"], [f"c{i}"], name=f"conv{i}",
                                   kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x, c = f"r{i}", width
    inits += [numpy_helper.from_array((rng.standard_normal((10, width)) * 0.1).astype(np.float32), "fc.w"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fc.b")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["output"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "synthetic_cnn",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, cin, size, size])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


# grids and single-op models ----------------------------------------------------------------------
def test_axis_grid_has_anchors_step_probes_and_one_period_at_every_alignment() -> None:
    g = axis_grid(256, points=4)
    assert g == [56, 64, 65, 112, 113, 114, 116, 119, 120, 121, 124, 126, 127, 128, 129, 184, 192, 193, 248, 256]
    assert {c % 16 for c in range(112, 129) if c in g} >= {0, 1, 2, 4, 8, 9, 15}  # odd, 2, 4, 8, 16 all there
    big = axis_grid(2048, points=6)
    assert big[-1] == 2048 and all(1 <= c <= 2048 for c in big) and len(big) < 30
    assert all(c + 1 in big for c in big if c % 16 == 0 and c < 2048 and c - 8 in big)
    assert axis_grid(20) == list(range(1, 21)) and axis_grid(1) == [1]  # narrow layers: every count
    assert all(c % 4 == 0 for c in axis_grid(512, step=4, points=3))  # grouped conv: whole groups


def test_sig_grid_varies_each_axis_at_the_other_dense_count_plus_one_joint_cut() -> None:
    sig = LayerSig("conv", 64, 64, (1, 8, 8), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    pairs = sig_grid(sig, True, True, 2)
    assert (64, 64) in pairs and (32, 32) in pairs
    assert {p for p in pairs if p[1] == 64 and p[0] != 64} == {(c, 64) for c in axis_grid(64, points=2) if c != 64}
    assert sig_grid(sig, False, False, 2) == [(64, 64)]
    dw = LayerSig("conv", 32, 64, (1, 8, 8), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), multiplier=2)
    assert all(co == 2 * ci for ci, co in sig_grid(dw, True, True, 2))


@pytest.mark.parametrize("sig, cin, cout, out_shape", [
    (LayerSig("conv", 16, 16, (2, 9, 9), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)), 7, 5, [2, 5, 5, 5]),
    (LayerSig("conv", 16, 16, (1, 8, 8), (3, 3), (1, 1), (0, 0, 0, 0), (1, 1), "SAME_UPPER"), 3, 4, [1, 4, 8, 8]),
    (LayerSig("conv", 8, 16, (1, 6, 6), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), multiplier=2), 5, 10, [1, 10, 6, 6]),
    (LayerSig("conv", 8, 8, (1, 6, 6), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), group=4), 4, 8, [1, 8, 6, 6]),
    (LayerSig("gemm", 32, 10, (3,), trans_b=1), 20, 7, [3, 7]),
    (LayerSig("matmul", 32, 64, (1, 17), bias=False), 31, 33, [1, 17, 33]),
])
def test_layer_models_are_valid_and_run(sig: LayerSig, cin: int, cout: int, out_shape: list[int]) -> None:
    m = layer_model(sig, cin, cout)
    onnx.checker.check_model(m, full_check=True)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = sess.get_inputs()[0]
    y = sess.run(None, {x.name: np.ones(x.shape, np.float32)})[0]
    assert list(y.shape) == out_shape


def test_model_layers_of_zoo_models() -> None:
    view = GraphView(load_model(ZOO["resnet18"].path).model)
    layers = model_layers(view)
    assert len(layers) == 16 and sum(lay.sig.op == "gemm" for lay in layers) == 1
    stem = layers[0]
    assert stem.sig.kernel == (7, 7) and stem.sig.strides == (2, 2) and stem.sig.lead == (1, 32, 32)
    assert stem.cin == Space("input", 1)
    assert {lay.sig.lead[0] for lay in model_layers(view, {"input": [4, 3, 32, 32]})} == {4}
    mb = model_layers(GraphView(load_model(ZOO["mobilenetv2"].path).model))
    dw = [lay for lay in mb if lay.sig.multiplier]
    assert dw and all(lay.sig.multiplier == 1 and lay.counts({lay.cin: 3})[0] == lay.sig.cin - 3 for lay in dw)
    vit = model_layers(GraphView(load_model(ZOO["vit"].path).model))
    assert any(lay.sig.op == "matmul" and lay.sig.lead == (1, 17) for lay in vit)


# lookups -----------------------------------------------------------------------------------------
def _trend(c: int) -> float:
    return 0.1 + 0.01 * c


@pytest.mark.parametrize("truth, block, odd_penalty", [
    (lambda c: _trend(-(-c // 8) * 8), 8, 1.0),  # output channels, AVX2: blocks of 8
    (lambda c: _trend(-(-c // 16) * 16), 16, 1.0),  # output channels, AVX-512: blocks of 16
    (lambda c: _trend(c) * (1.0 if c % 8 == 0 else 1.2), 1, 1.2),  # input channels: off-grid is slower
])
def test_staircase_finds_the_block_and_the_off_grid_penalty(truth: Any, block: int, odd_penalty: float) -> None:
    s = Staircase({c: truth(c) for c in axis_grid(256, points=4)})
    assert s.block == block and s.penalty[1] == pytest.approx(odd_penalty)
    for c in (70, 97, 100, 104, 150, 161, 200, 233):  # none of them measured
        assert s(c) == pytest.approx(truth(c), rel=1e-6), c
    assert Staircase({8: 1.0, 16: 2.0})(12) == pytest.approx(1.5)  # too few points: plain interpolation


def test_layer_curve_recovers_a_fixed_cost_plus_product_model() -> None:
    sig = LayerSig("conv", 64, 64, (1, 8, 8), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))

    def truth(ci: int, co: int) -> float:
        return 0.2 + 0.001 * ci * co

    rows = {p: truth(*p) for p in sig_grid(sig, True, True, 4)}
    curve = LayerCurve(sig, rows)
    assert curve.overhead == pytest.approx(0.2, rel=1e-6)
    for ci, co in ((48, 40), (32, 64), (17, 33), (64, 16)):
        assert curve(ci, co) == pytest.approx(truth(ci, co), rel=0.02)
    with pytest.raises(GraphpruneError, match="no dense point"):
        LayerCurve(sig, {(32, 64): 1.0})


def test_table_round_trip_merge_and_key_check(tmp_path: Path) -> None:
    sig = LayerSig("gemm", 32, 10, (1,))
    key = {"target": "ort-cpu", "device": {"cpu_model": "x"}, "versions": {}, "config": {}}
    t = LatencyTable.open(key, tmp_path)
    t.add(sig, [(32, 10, 1.0, "local"), (16, 10, 0.6, "local")])
    t.models["m"] = {"ms": 2.0}
    path = t.save()
    assert path.parent == tmp_path and path.name.startswith("ort-cpu-")
    again = LatencyTable.open(key, tmp_path)
    assert again.rows(sig) == {(16, 10): 0.6, (32, 10): 1.0} and again.models["m"]["ms"] == 2.0
    assert again.missing(sig, [(16, 10), (8, 10)]) == [(8, 10)]
    other = LatencyTable.open({**key, "device": {"cpu_model": "y"}}, tmp_path)
    assert other.path != path and other.rows(sig) == {}
    with pytest.raises(GraphpruneError, match="another target"):
        other.merge_file(path)
    doc = json.loads(path.read_text())
    assert doc["schema"] == "graphprune.latency/1" and doc["layers"][sig.id]["rows"][0][3] == "local"


# the cost model without measuring ----------------------------------------------------------------
def _fake_table(model: onnx.ModelProto, penalty: float = 1.6) -> tuple[object, TableLatency]:
    """A table where time grows with channels and off-grid counts (not multiples of 8) cost ``penalty``x."""
    analysis = analyze(model)
    layers = model_layers(analysis.view)
    table = LatencyTable({"target": "fake"})

    def ms(ci: int, co: int) -> float:
        return 0.01 + 1e-4 * ci * co * (penalty if ci % 8 else 1.0) * (penalty if co % 8 else 1.0)

    for lay in layers:
        table.add(lay.sig, [(ci, co, ms(ci, co), "fake") for ci, co in sig_grid(lay.sig, True, True, 4)])
    return analysis, TableLatency(analysis, table, layers, dense_ms=1.1 * sum(
        ms(lay.sig.cin, lay.sig.cout) for lay in layers))


def _counts(analysis: object, alloc: object) -> dict[str, int]:
    return {g.nodes[0]: alloc.decisions[g.id].units_after for g in analysis.groups if g.nodes}  # type: ignore[attr-defined]


def test_round_to_auto_moves_kept_counts_to_step_edges_and_never_removes_more() -> None:
    analysis, lat = _fake_table(synthetic_cnn(width=64, depth=3, size=8))
    scores = {g.id: np.arange(g.n_units, dtype=float) for g in analysis.groups}  # type: ignore[attr-defined]
    plain = allocate(analysis, scores, AllocationOptions(ratio=0.3))  # type: ignore[arg-type]
    auto = allocate(analysis, scores, AllocationOptions(ratio=0.3, round_to="auto", latency=lat))  # type: ignore[arg-type]
    for gid, d in plain.decisions.items():
        if d.removed:
            assert d.units_after == 45  # floor(0.3 * 64) = 19 removed
            assert auto.decisions[gid].units_after == 48  # next multiple of 8: faster and wider
    assert auto.latency_ms is not None and auto.latency_ms < lat.predict(
        CostModel(analysis).removed_channels({g: d.removed for g, d in plain.decisions.items()}))  # type: ignore[arg-type]


def test_latency_target_search_and_errors() -> None:
    analysis, lat = _fake_table(synthetic_cnn(width=64, depth=3, size=8))
    scores = {g.id: np.arange(g.n_units, dtype=float) for g in analysis.groups}  # type: ignore[attr-defined]
    dense = lat.predict({})
    a = allocate(analysis, scores, AllocationOptions(target_latency_ms=0.5 * dense, latency=lat,  # type: ignore[arg-type]
                                                     global_ranking=True))
    assert a.latency_ms is not None and a.latency_ms <= 0.5 * dense and a.ratio > 0
    assert allocate(analysis, scores, AllocationOptions(target_latency_ms=2 * dense, latency=lat)).kept == {}  # type: ignore[arg-type]
    with pytest.raises(TargetUnreachableError, match="unreachable"):
        allocate(analysis, scores, AllocationOptions(target_latency_ms=1e-6, latency=lat, max_ratio=0.5))  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="latency model"):
        AllocationOptions(round_to="auto")
    with pytest.raises(UsageError, match="one of"):
        AllocationOptions(target_macs=0.5, target_latency_ms=1.0, latency=lat)
    with pytest.raises(UsageError, match="round_to"):
        AllocationOptions(round_to="fast")


@pytest.mark.parametrize("text, ms", [("5ms", 5.0), ("5 ms", 5.0), ("800us", 0.8), ("0.005s", 5.0), ("2.5", 2.5)])
def test_parse_latency(text: str, ms: float) -> None:
    assert parse_latency(text) == pytest.approx(ms)


@pytest.mark.parametrize("bad", ["fast", "-1ms", "0", "nanms"])
def test_parse_latency_rejects(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_latency(bad)


# measuring on ort-cpu ----------------------------------------------------------------------------
def test_calibrate_measures_once_then_uses_the_cache(tmp_path: Path) -> None:
    model = ZOO["small_cnn"].path
    [cal] = calibrate(model, options=ONE_THREAD, cache_dir=tmp_path, points=1, timing=FAST)
    assert cal.measured > 0 and cal.cached == 0 and cal.dense_ms > 0 and cal.devices == ["local"]
    assert {lay.sig.describe() for lay in cal.layers} == {"conv3x3s1_1->8@28x28_b1", "conv3x3s1_8->16@14x14_b1",
                                                          "gemm_784->32_m1", "gemm_32->10_m1"}
    for lay in cal.layers:
        assert cal.table.curve(lay.sig).dense > 0
    [again] = calibrate(model, options=ONE_THREAD, cache_dir=tmp_path, points=1, timing=FAST)
    assert again.measured == 0 and again.cached == cal.measured and again.dense_ms == cal.dense_ms
    lat = again.latency(analyze(str(model)))
    assert lat.predict({}) == pytest.approx(again.dense_ms)


def _median_error(tmp_path: Path, tries: int = 3) -> tuple[float, list[float], object]:
    path = tmp_path / "cnn.onnx"
    onnx.save(synthetic_cnn(), path)
    errors, last = [], None
    for k in range(tries):
        # a fresh table per try: a noisy measurement must not poison the others
        dense = calibrate(path, options=ONE_THREAD, cache_dir=tmp_path / f"c{k}", points=4,
                          timing=ProfileOptions(warmup_s=0.05, iterations=10, duration_s=0.02))[0].dense_ms
        last = shrink_to_latency(path, 0.6 * dense, options=ONE_THREAD, cache_dir=tmp_path / f"c{k}", points=4,
                                 output=tmp_path / f"out{k}.onnx", verify=False,
                                 measure_timing=ProfileOptions(warmup_s=0.2, iterations=20, duration_s=0.5))
        assert last.error is not None
        errors.append(abs(last.error))
        if errors[-1] <= 0.05:
            break
    return float(np.median(errors)), errors, last


def test_latency_target_prediction_matches_measurement_within_10_percent(tmp_path: Path) -> None:
    """Acceptance: prune to 60% of the dense latency; predicted vs measured (side by side with the dense
    model, the prediction rescaled by the dense model's drift since calibration) within 10%."""
    err, errors, result = _median_error(tmp_path)
    assert err <= 0.10, f"prediction errors {errors}: {result.summary()}"  # type: ignore[attr-defined]
    assert result.predicted_ms <= 0.6 * result.calibration.dense_ms * 1.0001  # type: ignore[attr-defined]
    assert result.pruned.macs_after < result.pruned.macs_before  # type: ignore[attr-defined]


# CLI ---------------------------------------------------------------------------------------------
def _cli(*args: object) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_calibrate_and_shrink_latency_cli(tmp_path: Path) -> None:
    model = ZOO["small_cnn"].path
    common = ["-t", "ort-cpu", "--threads", "1", "--points", "1", "--table-duration", "0.005",
              "--table-iterations", "3", "--cache", tmp_path]
    r = _cli("calibrate-latency", model, *common, "--json", tmp_path / "table.json")
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    assert "conv3x3s1_8->16@14x14_b1" in r.stdout and "dense model" in r.stdout  # type: ignore[attr-defined]
    assert json.loads((tmp_path / "table.json").read_text())["schema"] == "graphprune.latency/1"
    r = _cli("shrink-latency", model, "--target-latency", "1000ms", "-o", tmp_path / "p.onnx", *common,
             "--warmup", "0")
    assert r.exit_code == 2 and "No such option" in r.stderr  # type: ignore[attr-defined]
    r = _cli("shrink-latency", model, "--target-latency", "1000ms", "-o", tmp_path / "p.onnx", "--json", *common)
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    doc = json.loads(r.stdout)  # type: ignore[attr-defined]
    assert doc["ratio"] == 0 and doc["macs"]["after"] == doc["macs"]["before"] and doc["measured_ms"] > 0
    r = _cli("shrink-latency", model, "--target-latency", "soon", *common)
    assert r.exit_code == 2 and "expected a time" in r.stderr  # type: ignore[attr-defined]


def test_removed_channel_bookkeeping_matches_cost_model() -> None:
    analysis = analyze(synthetic_cnn(width=16, depth=2, size=8))
    cost = CostModel(analysis)
    g = next(g for g in analysis.groups if g.prunable)
    removed: Mapping[Space, int] = cost.removed_channels({g.id: 3})
    assert set(removed) == {s for s in g.spaces if not s.virtual} and set(removed.values()) == {3}
