"""Models with external data stay on disk and are written back with external data; old opsets are
converted; the files graphprune writes are self-contained and relocatable."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

import graphprune
from graphprune.model_io import load_model
from graphprune.tensors import is_external, read
from models.llama import LlamaConfig, build


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_external_weights_are_not_loaded_into_the_proto(tmp_path):
    path = build(LlamaConfig(), tmp_path / "m.onnx")
    loaded = load_model(path)
    ext = [t for t in loaded.model.graph.initializer if is_external(t)]
    assert ext and all(not t.raw_data for t in ext)
    full = onnx.load(str(path))  # onnx's own loader, for comparison
    by_name = {t.name: numpy_helper.to_array(t) for t in full.graph.initializer}
    for t in ext:
        np.testing.assert_array_equal(read(t), by_name[t.name])


def test_shrink_writes_relocatable_external_data_and_apply_plan_matches(tmp_path):
    src = build(LlamaConfig(), tmp_path / "in" / "m.onnx")
    before = (_digest(src), _digest(src.with_name("m.onnx.data")))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    plan = tmp_path / "plan.json"
    r = graphprune.shrink(str(src), ratio=0.5, output=str(out_dir / "p.onnx"), plan_path=str(plan))
    assert r.verify.passed
    assert (_digest(src), _digest(src.with_name("m.onnx.data"))) == before  # inputs untouched
    m = onnx.load(str(out_dir / "p.onnx"), load_external_data=False)
    locs = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    assert locs == {"p.onnx.data"}
    moved = tmp_path / "moved"
    shutil.copytree(out_dir, moved)  # relocatable: only relative locations
    ids = np.array([[1, 2, 3, 4]], np.int64)
    ort.InferenceSession(str(moved / "p.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})
    r2 = graphprune.apply_plan(str(src), str(plan), output=str(tmp_path / "q.onnx"))
    assert r2.verify.passed
    q = onnx.load(str(tmp_path / "q.onnx"), load_external_data=False)
    for t in q.graph.initializer:  # the only difference may be the data file's name
        for e in t.external_data:
            if e.key == "location":
                e.value = "p.onnx.data"
    assert q.SerializeToString() == m.SerializeToString()
    assert (tmp_path / "q.onnx.data").read_bytes() == (out_dir / "p.onnx.data").read_bytes()
    assert not list(tmp_path.rglob(".graphprune-scratch-*"))


def _opset9_model():
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")
    scale = numpy_helper.from_array(np.array([1.0, 1.0, 2.0, 2.0], np.float32), "scales")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Upsample", ["b", "scales"], ["c"], mode="nearest"),
        helper.make_node("Conv", ["c", "w2"], ["y"]),
    ]
    g = helper.make_graph(nodes, "old", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 6, 6])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 12, 12])], [w1, w2, scale])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)])
    m.ir_version = 4
    return m


def test_old_opset_is_converted_and_prunes(tmp_path):
    path = tmp_path / "old.onnx"
    onnx.save(_opset9_model(), path)
    loaded = load_model(path)
    assert loaded.original_opset == 9 and loaded.opset >= 11
    assert any("version converter" in w for w in loaded.warnings)
    r = graphprune.shrink(str(path), ratio=0.5, output=str(tmp_path / "p.onnx"))
    assert r.verify.passed and r.macs_after < r.macs_before
