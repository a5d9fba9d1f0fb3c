"""The fp16 pass for strongly typed TensorRT: types, kept-fp32 regions, numerics against ORT fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx.reference import ReferenceEvaluator
from target_helpers import ZOO, conv_model, resize_model

from graphprune.model_io import load_model
from graphprune.targets.fp16 import convert_float_to_float16


def _types(m: onnx.ModelProto) -> dict[str, int]:
    return {t.name: t.data_type for t in m.graph.initializer}


def test_resize_scales_and_shape_math_stay_fp32() -> None:
    src = load_model(resize_model()).model
    res = convert_float_to_float16(src)
    m = res.model
    assert _types(m) == {"w": TensorProto.FLOAT16, "scales": TensorProto.FLOAT}
    assert [i.type.tensor_type.elem_type for i in m.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in m.graph.output] == [TensorProto.FLOAT, TensorProto.INT64]
    kept = " ".join(res.kept_fp32)
    assert "div (Div)" in kept and "cast_f (Cast)" in kept  # shape arithmetic in float stays float32
    assert res.initializers == 1 and res.casts == 2  # input cast to fp16, output cast back
    casts = {n.output[0]: n for n in m.graph.node if n.op_type == "Cast"}
    assert casts["shp_f"].attribute[0].i == TensorProto.FLOAT
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(src.SerializeToString()).run(None, {"x": x})
    got = list(ReferenceEvaluator(m).run(None, {"x": x}))
    assert got[0].dtype == np.float32
    np.testing.assert_allclose(got[0], ref[0], rtol=2e-2, atol=2e-2)
    np.testing.assert_array_equal(got[1], ref[1])


def test_conv_model_numerics_and_io_types() -> None:
    src = load_model(conv_model(8)).model
    res = convert_float_to_float16(src)
    assert set(_types(res.model).values()) == {TensorProto.FLOAT16}
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    ref = ort.InferenceSession(src.SerializeToString()).run(None, {"x": x})[0]
    got = list(ReferenceEvaluator(res.model).run(None, {"x": x}))[0]
    np.testing.assert_allclose(got, ref, rtol=2e-2, atol=2e-2)


def test_out_of_range_weights_are_clipped_and_counted() -> None:
    m = conv_model(4)
    w = onnx.numpy_helper.to_array(m.graph.initializer[0]).copy()
    w.flat[0] = 1e6
    m.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w, "w1"))
    res = convert_float_to_float16(load_model(m).model)
    assert res.clipped_values == 1
    conv = onnx.numpy_helper.to_array(res.model.graph.initializer[0])
    assert np.isfinite(conv).all() and conv.flat[0] == np.float16(65504)


def test_keep_io_types_off_makes_fp16_io() -> None:
    res = convert_float_to_float16(load_model(conv_model(4)).model, keep_io_types=False)
    assert res.model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert res.casts == 0


@pytest.mark.parametrize("model", ZOO, ids=[p.stem for p in ZOO])
def test_zoo_converts_to_a_valid_graph(model: Path) -> None:
    res = convert_float_to_float16(load_model(model).model)
    onnx.checker.check_model(res.model)
    assert res.fp16_nodes > 0
