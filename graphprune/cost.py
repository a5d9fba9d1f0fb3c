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


def mac_axes(view: GraphView, i: int) -> list[tuple[str, int]]:
    """The (tensor, axis) pairs whose sizes multiply into node ``i``'s MACs (empty: none counted).

    Conv / ConvTranspose: every output / input element meets one weight slice [C/group, k...];
    Gemm / MatMul: every output element is a dot product over the contracted axis of A."""
    n = view.nodes[i]
    op = n.op_type

    def axes(t: str, start: int = 0) -> list[tuple[str, int]] | None:
        shape = view.shape(t)
        return None if shape is None else [(t, a) for a in range(start, len(shape))]

    if op in ("Conv", "ConvTranspose"):
        act, w = axes(n.output[0] if op == "Conv" else n.input[0]), axes(n.input[1], 1)
    elif op == "Gemm":
        act = axes(n.output[0])
        w = [(n.input[0], 0 if view.attr(i, "transA", 0) else 1)] if view.shape(n.input[0]) is not None else None
    elif op == "MatMul":
        a = view.shape(n.input[0])
        act = axes(n.output[0])
        w = [(n.input[0], len(a) - 1)] if a else None
    else:
        return []
    return [] if act is None or w is None else act + w


def node_macs(view: GraphView, i: int) -> int:
    total = 1
    pairs = mac_axes(view, i)
    for t, a in pairs:
        d = view.shape(t)[a]  # type: ignore[index]
        total *= d if isinstance(d, int) else 1
    return total if pairs else 0


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
