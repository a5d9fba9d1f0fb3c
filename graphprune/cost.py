"""Parameter and MAC counts from a graph view (symbolic dims count as 1: per sample / per token)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import onnx

from graphprune.graph import GraphView

_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE,
}


def _numel(shape: tuple[object, ...] | None) -> int:
    if shape is None:
        return 0
    return math.prod(d if isinstance(d, int) else 1 for d in shape)


def node_macs(view: GraphView, i: int) -> int:
    n = view.nodes[i]
    op = n.op_type
    if op in ("Conv", "ConvTranspose"):
        # every output (Conv) / input (ConvTranspose) element meets one weight slice [C/group, k...]
        w = view.shape(n.input[1])
        act = view.shape(n.output[0] if op == "Conv" else n.input[0])
        if w is None or act is None:
            return 0
        return _numel(act) * _numel(w[1:])
    if op == "Gemm":
        a = view.shape(n.input[0])
        y = view.shape(n.output[0])
        if a is None or y is None:
            return 0
        k = a[0] if view.attr(i, "transA", 0) else a[1]
        return _numel(y) * (k if isinstance(k, int) else 1)
    if op == "MatMul":
        a = view.shape(n.input[0])
        y = view.shape(n.output[0])
        if a is None or y is None or not a:
            return 0
        k = a[-1]
        return _numel(y) * (k if isinstance(k, int) else 1)
    return 0


@dataclass
class Cost:
    params: int
    macs: int
    macs_by_op: dict[str, int] = field(default_factory=dict)
    node_macs: dict[int, int] = field(default_factory=dict)


def count(view: GraphView) -> Cost:
    params = 0
    for name in list(view.initializers) + [
        n.output[0] for n in view.nodes if n.op_type == "Constant" and n.output
    ]:
        if view.dtypes.get(name) in _FLOAT_TYPES:
            params += _numel(view.shape(name))
    per_node: dict[int, int] = {}
    by_op: Counter[str] = Counter()
    for i in range(len(view.nodes)):
        m = node_macs(view, i)
        if m:
            per_node[i] = m
            by_op[view.nodes[i].op_type] += m
    return Cost(params=params, macs=sum(per_node.values()), macs_by_op=dict(by_op), node_macs=per_node)
