"""TensorRT-RTX: real ONNX parsing and ahead-of-time engine builds on this CPU-only machine."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from target_helpers import ZOO, error_line, run_cli

from graphprune.targets.runner import cuda_device_count

trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt_rtx cannot be imported (pip install tensorrt-rtx-cu13)")
NO_GPU = cuda_device_count()[0] == 0
REPORT_KEYS = {"library", "strongly_typed", "precision", "flags", "workspace_bytes", "dla_core",
               "compute_capabilities", "profiles", "io", "num_layers", "parse_s", "build_s", "timing_cache",
               "notes", "warnings"}


def _build(model: Path, out: Path, *extra: str | Path) -> dict[str, Any]:
    r = run_cli("build", model, "-t", "tensorrt-rtx", "-o", out, *extra)
    assert r.exit_code == 0, r.stderr
    assert out.stat().st_size > 0
    return json.loads(out.with_name(out.name + ".json").read_text())


def test_build_engine_and_report(models: dict[str, Path], tmp_path: Path) -> None:
    rep = _build(models["dense"], tmp_path / "dense.engine", "--workspace", "64M")
    assert rep["schema"] == "graphprune.build/1" and rep["target"] == "tensorrt-rtx"
    b = rep["build"]
    assert REPORT_KEYS <= set(b)
    assert b["library"] == {"module": "tensorrt_rtx", "version": trt.__version__}
    assert b["strongly_typed"] is True and b["precision"] == "fp32" and b["workspace_bytes"] == 64 << 20
    assert [(x["name"], x["kind"]) for x in b["io"]] == [("x", "input"), ("y", "output")]
    assert b["build_s"] > 0 and b["num_layers"] > 0
    assert rep["versions"]["tensorrt_rtx"] == trt.__version__
    assert rep["outputs"]["engine"]["bytes"] == (tmp_path / "dense.engine").stat().st_size
    assert "cpu_count" in rep["device"]["facts"]


def test_dynamic_shapes_make_a_profile(models: dict[str, Path], tmp_path: Path) -> None:
    rep = _build(models["dynamic"], tmp_path / "d.engine", "--min-shapes", "x:1x3x32x32",
                 "--shapes", "x:4x3x32x32", "--max-shapes", "x:8x3x32x32")
    assert rep["build"]["profiles"] == [{"name": "x", "min": [1, 3, 32, 32], "opt": [4, 3, 32, 32],
                                         "max": [8, 3, 32, 32]}]
    rep = _build(models["dynamic"], tmp_path / "d1.engine")  # no shapes: batch 1, and said so
    assert rep["build"]["profiles"][0]["opt"] == [1, 3, 32, 32]
    assert any("pass --shapes" in n for n in rep["build"]["notes"])


def test_timing_cache_is_written_then_reused(models: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "timing.cache"
    first = _build(models["dense"], tmp_path / "a.engine", "--timing-cache", cache)["build"]["timing_cache"]
    assert cache.is_file() and first["loaded_bytes"] == 0 and first["saved_bytes"] == cache.stat().st_size
    second = _build(models["dense"], tmp_path / "b.engine", "--timing-cache", cache)["build"]["timing_cache"]
    assert second["loaded_bytes"] == first["saved_bytes"]


def test_fp16_goes_through_the_graph_on_strongly_typed_builders(models: dict[str, Path], tmp_path: Path) -> None:
    rep = _build(models["resize"], tmp_path / "r16.engine", "--precision", "fp16", "--compute-capability", "SM86,sm89")
    b = rep["build"]
    assert b["precision"] == "fp16" and b["graph_precision"] is True and b["strongly_typed"] is True
    assert b["compute_capabilities"] == ["SM86", "SM89"]
    assert [x["dtype"] for x in b["io"] if x["kind"] == "input"] == ["FLOAT"]  # IO stays float32
    assert not list(tmp_path.glob(".*fp16.onnx"))  # the converted copy is cleaned up


@pytest.mark.parametrize("args, code, needle", [
    (["--precision", "int8"], 2, "strongly typed networks: int8 must live in the ONNX graph"),
    (["--dla-core", "0"], 1, "no DLA core"),
    (["--min-shapes", "x:1x3x32x32"], 2, "give --shapes (opt) or all of --min-shapes/--max-shapes"),
    (["--workspace", "lots"], 2, "expected a size"),
])
def test_build_option_errors(models: dict[str, Path], tmp_path: Path, args: list[str], code: int, needle: str) -> None:
    r = run_cli("build", models["dynamic"], "-t", "tensorrt-rtx", "-o", tmp_path / "e.engine", *args)
    assert r.exit_code == code
    assert needle in error_line(r)


def test_parser_error_names_the_node(models: dict[str, Path], tmp_path: Path) -> None:
    r = run_cli("build", models["det"], "-t", "tensorrt-rtx", "-o", tmp_path / "det.engine")
    assert r.exit_code == 1
    line = error_line(r)
    assert "ONNX parser rejected the model: node #1 'odd_det' (Det): UNSUPPORTED_NODE" in line
    assert not (tmp_path / "det.engine").exists()


@pytest.mark.skipif(not NO_GPU, reason="this machine has a CUDA GPU")
def test_profile_engine_without_gpu_is_a_clear_error(models: dict[str, Path], tmp_path: Path) -> None:
    eng = tmp_path / "p.engine"
    _build(models["dense"], eng)
    r = run_cli("profile", eng, "-t", "tensorrt-rtx", "--iterations", "1")
    assert r.exit_code == 1 and "no CUDA GPU" in error_line(r)


def test_engine_from_another_version_or_library(models: dict[str, Path], tmp_path: Path) -> None:
    eng = tmp_path / "v.engine"
    rep = _build(models["dense"], eng)
    sidecar = eng.with_name(eng.name + ".json")
    rep["build"]["library"]["version"] = "0.9.0"
    sidecar.write_text(json.dumps(rep))
    r = run_cli("profile", eng, "-t", "tensorrt-rtx")
    assert r.exit_code == 1
    assert f"built with tensorrt_rtx 0.9.0 but this device has {trt.__version__}" in error_line(r)
    r = run_cli("profile", eng, "-t", "tensorrt")
    assert r.exit_code == 1 and "profile it with --target tensorrt-rtx" in error_line(r)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="full TensorRT is installed here")
def test_full_tensorrt_missing_is_reported(models: dict[str, Path], tmp_path: Path) -> None:
    r = run_cli("build", models["dense"], "-t", "tensorrt", "-o", tmp_path / "t.engine")
    assert r.exit_code == 1 and "cannot import tensorrt" in error_line(r)


@pytest.mark.parametrize("model", ZOO, ids=[p.stem for p in ZOO])
def test_zoo_models_build_ahead_of_time(model: Path, tmp_path: Path) -> None:
    rep = _build(model, tmp_path / f"{model.stem}.engine")
    assert rep["build"]["num_layers"] > 0
