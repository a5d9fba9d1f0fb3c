"""float32 -> float16 conversion of an ONNX graph, for strongly typed TensorRT (11.x, RTX, 10.x opt-in).

Strongly typed builders take each tensor's type from the graph, so "build in fp16" means "make the graph
fp16".  This pass converts float32 initializers, ``Constant``/``ConstantOfShape`` values and ``Cast(to=float)``
nodes inside the converted region, and inserts ``Cast`` nodes where the fp16 region meets float32:
graph inputs and outputs keep float32 (``keep_io_types``), and some tensors must stay float32:

* slots the ONNX spec types as float32 (``Resize`` roi/scales, ``Upsample`` scales);
* shape arithmetic: tensors computed from ``Shape``/``Size`` (fp16 is exact only up to 2048);
* ops in :data:`KEEP_FP32_OPS` (random generators, ``Range``, NMS, quantisation), nodes of other domains
  and nodes with subgraphs (``If``/``Loop``/``Scan``).

Weights beyond the fp16 range are clipped to +-65504 and counted, never silently turned into inf.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphprune.errors import TargetError

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = 65504.0
FP32_ONLY_INPUTS: dict[str, tuple[int, ...]] = {"Resize": (1, 2), "Upsample": (1,)}
KEEP_FP32_OPS = frozenset({
    "Range", "NonMaxSuppression", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
    "Multinomial", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
})
_SHAPE_SOURCES = frozenset({"Shape", "Size"})


@dataclass
class Fp16Result:
    """The converted model and what the pass did."""

    model: onnx.ModelProto
    initializers: int = 0
    fp16_nodes: int = 0
    kept_fp32: list[str] = field(default_factory=list)
    casts: int = 0
    clipped_values: int = 0


def _elem_types(g: onnx.GraphProto) -> dict[str, int]:
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.input, *g.output, *g.value_info]
             if vi.type.HasField("tensor_type")}
    types.update({t.name: t.data_type for t in g.initializer})
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
                elif a.name in ("value_float", "value_floats"):
                    types[n.output[0]] = FLOAT
    return types


def _shape_tensors(g: onnx.GraphProto) -> set[str]:
    """Tensors computed only from Shape/Size outputs and constants."""
    consts = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    shape: set[str] = set()
    for n in g.node:
        if n.op_type in _SHAPE_SOURCES:
            shape.update(n.output)
            continue
        live = [i for i in n.input if i and i not in consts]
        if live and all(i in shape for i in live):
            shape.update(n.output)
    return shape


def _to_fp16_array(arr: np.ndarray, result: Fp16Result) -> np.ndarray:
    over = np.abs(arr) > FP16_MAX
    result.clipped_values += int(np.count_nonzero(over & np.isfinite(arr)))
    return np.where(over & np.isfinite(arr), np.clip(arr, -FP16_MAX, FP16_MAX), arr).astype(np.float16)


def _tensor_fp16(t: onnx.TensorProto, result: Fp16Result) -> onnx.TensorProto:
    out = numpy_helper.from_array(_to_fp16_array(numpy_helper.to_array(t), result), t.name)
    return out


def convert_float_to_float16(model: onnx.ModelProto, *, keep_io_types: bool = True,
                             keep_ops: frozenset[str] = KEEP_FP32_OPS) -> Fp16Result:
    """Return a float16 copy of ``model`` (which should carry shape-inferred value_info)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    result = Fp16Result(model=m)
    types = _elem_types(g)
    shape = _shape_tensors(g)
    fp16_node = []
    for n in g.node:
        keep = (n.op_type in keep_ops or n.domain not in ("", "ai.onnx")
                or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)
                or any(t in shape for t in [*n.input, *n.output] if types.get(t) == FLOAT))
        fp16_node.append(not keep)
        if keep and any(types.get(t) == FLOAT for t in [*n.input, *n.output]):
            result.kept_fp32.append(f"{n.name or n.output[0]} ({n.op_type})")

    def wants_fp16(i: int, slot: int) -> bool:
        return fp16_node[i] and slot not in FP32_ONLY_INPUTS.get(g.node[i].op_type, ())

    consumers: dict[str, list[tuple[int, int]]] = {}
    for i, n in enumerate(g.node):
        for slot, name in enumerate(n.input):
            consumers.setdefault(name, []).append((i, slot))
    for i, n in enumerate(g.node):  # a constant follows its consumers (no cast back and forth)
        if n.op_type == "Constant" and fp16_node[i]:
            fp16_node[i] = all(wants_fp16(c, s) for c, s in consumers.get(n.output[0], []))
    outputs = {o.name for o in g.output}
    for k, t in enumerate(g.initializer):
        uses = consumers.get(t.name, [])
        if t.data_type == FLOAT and uses and t.name not in outputs and all(wants_fp16(i, s) for i, s in uses):
            g.initializer[k].CopyFrom(_tensor_fp16(t, result))
            types[t.name] = FLOAT16
            result.initializers += 1
    for i, n in enumerate(g.node):
        if not fp16_node[i]:
            continue
        result.fp16_nodes += 1
        _convert_node_attrs(n, result)
        for o in n.output:
            if types.get(o) == FLOAT:
                types[o] = FLOAT16
    if not keep_io_types:
        for vi in g.input:
            if types.get(vi.name) == FLOAT:
                types[vi.name] = FLOAT16
                vi.type.tensor_type.elem_type = FLOAT16
    new_nodes: list[onnx.NodeProto] = []
    made: dict[tuple[str, int], str] = {}

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in made:
            made[key] = f"{name}__to_{'fp16' if to == FLOAT16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [made[key]], to=to, name=f"{made[key]}_cast"))
            result.casts += 1
        return made[key]

    for i, n in enumerate(g.node):
        for slot, name in enumerate(n.input):
            have = types.get(name)
            if have not in (FLOAT, FLOAT16):
                continue
            need = FLOAT16 if wants_fp16(i, slot) else FLOAT
            if have != need:
                n.input[slot] = cast(name, need)
        new_nodes.append(n)
    _fix_outputs(g, types, new_nodes, keep_io_types, result)
    del g.node[:]
    g.node.extend(new_nodes)
    if not keep_io_types:
        for vi in g.output:
            if types.get(vi.name) == FLOAT16:
                vi.type.tensor_type.elem_type = FLOAT16
    del g.value_info[:]
    try:
        onnx.checker.check_model(m)
        result.model = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    except Exception as e:
        raise TargetError(f"fp16 conversion produced an invalid graph ({type(e).__name__}: {e}); build in "
                          "fp32 or convert the model with NVIDIA ModelOpt AutoCast") from e
    return result


def _convert_node_attrs(n: onnx.NodeProto, result: Fp16Result) -> None:
    """Constant values, ConstantOfShape fill values and Cast targets of a converted node become fp16."""
    for a in list(n.attribute):
        if n.op_type in ("Constant", "ConstantOfShape") and a.name == "value" and a.t.data_type == FLOAT:
            a.t.CopyFrom(_tensor_fp16(a.t, result))
        elif n.op_type == "Constant" and a.name in ("value_float", "value_floats"):
            vals = np.array(a.f if a.name == "value_float" else list(a.floats), dtype=np.float32)
            n.attribute.remove(a)
            n.attribute.append(helper.make_attribute("value", numpy_helper.from_array(_to_fp16_array(vals, result))))
        elif n.op_type == "Cast" and a.name == "to" and a.i == FLOAT:
            a.i = FLOAT16


def _fix_outputs(g: onnx.GraphProto, types: dict[str, int], nodes: list[onnx.NodeProto], keep_io: bool,
                 result: Fp16Result) -> None:
    """Graph outputs that became fp16 get a Cast back to float32 under their original name."""
    if not keep_io:
        return
    for out in g.output:
        if types.get(out.name) != FLOAT16 or out.type.tensor_type.elem_type != FLOAT:
            continue
        inner = f"{out.name}__fp16"
        for n in nodes:
            for k, o in enumerate(n.output):
                if o == out.name:
                    n.output[k] = inner
            for k, i in enumerate(n.input):
                if i == out.name:
                    n.input[k] = inner
        nodes.append(helper.make_node("Cast", [inner], [out.name], to=FLOAT, name=f"{inner}_cast"))
        result.casts += 1
