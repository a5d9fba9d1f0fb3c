"""ONNX Runtime targets, for real: build (.optimized.onnx + .ort), profile, compare, per-node, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from target_helpers import ZOO, error_line, run_cli

FAST = ["--warmup", "0", "--iterations", "3", "--duration", "0"]
STAT_KEYS = {"count", "min", "max", "mean", "median", "p90", "p95", "p99", "std", "cv", "throughput_per_s"}


def _outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_build_writes_optimized_onnx_ort_format_and_report(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "dense.ort"
    r = run_cli("build", models["dense"], "-t", "ort-cpu", "-o", out)
    assert r.exit_code == 0, r.stderr
    optimized, report = tmp_path / "dense.optimized.onnx", tmp_path / "dense.ort.json"
    for p in (out, optimized, report):
        assert p.is_file() and p.stat().st_size > 0
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    ref = _outputs(models["dense"], x)[0]
    np.testing.assert_allclose(_outputs(optimized, x)[0], ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_outputs(out, x)[0], ref, rtol=1e-4, atol=1e-5)
    data = json.loads(report.read_text())
    assert data["schema"] == "graphprune.build/1" and data["target"] == "ort-cpu"
    assert data["versions"]["onnxruntime"] == ort.__version__
    assert data["device"]["location"] == "local" and data["device"]["facts"]["cpu_count"] >= 1
    assert set(data["outputs"]) == {"optimized_onnx", "ort"}
    assert data["outputs"]["ort"]["bytes"] == out.stat().st_size
    assert data["build"]["config"]["graph_opt_level"] == "all"


def test_profile_json_and_csv(models: dict[str, Path], tmp_path: Path) -> None:
    js, cs = tmp_path / "p.json", tmp_path / "p.csv"
    r = run_cli("profile", models["dense"], "-t", "ort-cpu", *FAST, "--json", js, "--csv", cs,
                "--threads", "1", "--no-spinning", "--graph-opt-level", "basic")
    assert r.exit_code == 0, r.stderr
    assert "dense.onnx" in r.stdout and "median" in r.stdout
    d = json.loads(js.read_text())
    assert d["schema"] == "graphprune.profile/1" and d["target"] == "ort-cpu"
    assert d["device"]["location"] == "local"
    assert {"cpu_model", "cpu_count", "machine", "os"} <= set(d["device"]["facts"])
    assert {"python", "numpy", "onnxruntime", "graphprune"} <= set(d["versions"])
    [run] = d["runs"]
    assert set(run["latency_ms"]) == STAT_KEYS
    assert run["latency_ms"]["count"] == len(run["samples_ms"]) >= 3
    assert run["latency_ms"]["min"] <= run["latency_ms"]["median"] <= run["latency_ms"]["p99"]
    assert run["compute_latency_ms"] is None  # CPU: no host/device split
    assert run["init_ms"] > 0 and run["first_inference_ms"] > 0
    assert {"rss_delta_bytes", "peak_rss_delta_bytes", "peak_rss_bytes"} <= set(run["memory"])
    cfg = run["config"]
    assert cfg["intra_op_threads"] == 1 and cfg["spinning"] is False and cfg["graph_opt_level"] == "basic"
    assert cfg["providers"][-1] == "CPUExecutionProvider"
    assert run["inputs"] == [{"name": "x", "shape": [1, 3, 32, 32], "dtype": "float32", "source": "random"}]
    rows = list(csv.DictReader(cs.open()))
    assert len(rows) == 1 and rows[0]["model"] == "dense.onnx" and float(rows[0]["median_ms"]) > 0


def test_compare_interleaves_and_reports_ratio(models: dict[str, Path], tmp_path: Path) -> None:
    js = tmp_path / "c.json"
    r = run_cli("profile", models["dense"], "-t", "ort-cpu", "--compare", models["pruned"], *FAST, "--json", js)
    assert r.exit_code == 0, r.stderr
    assert "pruned.onnx vs dense.onnx: median latency ratio" in r.stdout
    d = json.loads(js.read_text())
    assert [x["name"] for x in d["runs"]] == ["dense.onnx", "pruned.onnx"]
    assert d["timing"]["interleaved"] is True
    assert len(d["runs"][0]["samples_ms"]) == len(d["runs"][1]["samples_ms"])
    [cmp] = d["comparison"]
    med = [x["latency_ms"]["median"] for x in d["runs"]]
    assert cmp["ratio_median"] == pytest.approx(med[1] / med[0])


def test_per_node_profile_aggregates_by_node_and_op(models: dict[str, Path], tmp_path: Path) -> None:
    js = tmp_path / "n.json"
    r = run_cli("profile", models["dense"], "-t", "ort-cpu", *FAST, "--per-node", "--top", "2", "--json", js,
                "--graph-opt-level", "disable")
    assert r.exit_code == 0, r.stderr
    assert "top 2 nodes" in r.stdout
    pn = json.loads(js.read_text())["runs"][0]["per_node"]
    ops = {row["op_type"] for row in pn["op_types"]}
    assert {"Conv", "Relu", "Gemm"} <= ops
    assert {row["node"] for row in pn["nodes"]} >= {"conv1", "conv2", "fc"}
    assert all(row["calls"] == pn["iterations"] for row in pn["nodes"])
    assert sum(row["percent"] for row in pn["op_types"]) == pytest.approx(100.0)


def test_profile_built_ort_file_and_dynamic_shapes(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "dyn.ort"
    assert run_cli("build", models["dynamic"], "-t", "ort-cpu", "-o", out).exit_code == 0
    js = tmp_path / "d.json"
    r = run_cli("profile", out, "-t", "ort-cpu", *FAST, "--shapes", "x:3x3x32x32", "--json", js)
    assert r.exit_code == 0, r.stderr
    assert json.loads(js.read_text())["runs"][0]["inputs"][0]["shape"] == [3, 3, 32, 32]
    r = run_cli("profile", models["dynamic"], "-t", "ort-cpu", *FAST, "--json", js)
    assert r.exit_code == 0 and "pass --shapes to choose" in r.stderr  # defaulted batch is reported
    assert json.loads(js.read_text())["runs"][0]["inputs"][0]["shape"] == [1, 3, 32, 32]


def test_inputs_from_npz(models: dict[str, Path], tmp_path: Path) -> None:
    npz, js = tmp_path / "in.npz", tmp_path / "i.json"
    np.savez(npz, x=np.ones((1, 3, 32, 32), np.float32))
    r = run_cli("profile", models["dense"], "-t", "ort-cpu", *FAST, "--inputs", npz, "--json", js)
    assert r.exit_code == 0, r.stderr
    assert json.loads(js.read_text())["runs"][0]["inputs"][0]["source"] == "npz"
    np.savez(npz, wrong=np.ones((1, 3, 32, 32), np.float32))
    r = run_cli("profile", models["dense"], "-t", "ort-cpu", *FAST, "--inputs", npz)
    assert r.exit_code == 2 and "lacks ['x']" in error_line(r)


@pytest.mark.parametrize("args, code, needle", [
    (["-t", "no-such-target"], 2, "unknown target 'no-such-target'; known targets: ort-cpu"),
    (["-t", "ort-cuda"], 1, "CUDAExecutionProvider is not available"),
    (["-t", "ort-trt"], 1, "TensorrtExecutionProvider is not available"),
    (["-t", "ort-cpu", "--shapes", "x:1x3"], 2, "--shapes gives 2 dims for input 'x'"),
    (["-t", "ort-cpu", "--shapes", "nonsense"], 2, "expected NAME:DxDx"),
])
def test_profile_errors_are_one_line(models: dict[str, Path], args: list[str], code: int, needle: str) -> None:
    r = run_cli("profile", models["dense"], *args, *FAST)
    assert r.exit_code == code
    assert needle in error_line(r)


def test_missing_provider_lists_available_providers(models: dict[str, Path]) -> None:
    line = error_line(run_cli("build", models["dense"], "-t", "ort-cuda"))
    assert all(p in line for p in ort.get_available_providers())


def test_bad_model_files(tmp_path: Path, models: dict[str, Path]) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not protobuf")
    r = run_cli("build", bad, "-t", "ort-cpu")
    assert r.exit_code == 1 and "not a valid ONNX file" in error_line(r)
    r = run_cli("profile", tmp_path / "missing.onnx", "-t", "ort-cpu")
    assert r.exit_code == 1 and "no such file" in error_line(r)
    same = tmp_path / "m.optimized.onnx"  # the optimised model would overwrite its own input
    same.write_bytes(models["dense"].read_bytes())
    r = run_cli("build", same, "-t", "ort-cpu", "-o", same)
    assert r.exit_code == 2 and "is the input file" in error_line(r)


def test_targets_lists_everything_with_reasons() -> None:
    r = run_cli("targets", "--json")
    assert r.exit_code == 0
    rows = {t["name"]: t for t in json.loads(r.stdout)["targets"]}
    assert set(rows) == {"ort-cpu", "ort-cuda", "ort-trt", "tensorrt", "tensorrt-rtx"}
    assert rows["ort-cpu"]["available"] is True
    for name, row in rows.items():
        assert row["detail"], name
        if not row["available"]:
            assert any(k in row["detail"] for k in ("not in onnxruntime", "cannot import", "no CUDA GPU")), row
    table = run_cli("targets")
    assert table.exit_code == 0 and "tensorrt-rtx" in table.stdout


@pytest.mark.parametrize("model", ZOO, ids=[p.stem for p in ZOO])
def test_zoo_build_and_profile(model: Path, tmp_path: Path) -> None:
    out = tmp_path / f"{model.stem}.ort"
    r = run_cli("build", model, "-t", "ort-cpu", "-o", out)
    assert r.exit_code == 0, r.stderr
    js = tmp_path / "z.json"
    r = run_cli("profile", out, "-t", "ort-cpu", "--warmup", "0", "--iterations", "2", "--duration", "0",
                "--json", js)
    assert r.exit_code == 0, r.stderr
    assert json.loads(js.read_text())["runs"][0]["latency_ms"]["count"] >= 2
