"""Tiny ONNX graphs built in code for rule and pass tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(1234)


class G:
    """Accumulates nodes and initializers; ``build`` makes a checked, shape-inferred model."""

    def __init__(self, opset: int = 17) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.opset = opset
        self.k = 0

    def name(self, base: str) -> str:
        self.k += 1
        return f"{base}{self.k}"

    def const(self, value: np.ndarray, base: str = "w") -> str:
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), n))
        return n

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs: object) -> list[str]:
        name = self.name(op)
        outs = [f"{name}_y{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs

    def op(self, op: str, *inputs: str, **attrs: object) -> str:
        return self.node(op, list(inputs), 1, **attrs)[0]

    def conv(self, x: str, cin: int, cout: int, k: int = 1, group: int = 1, bias: bool = True) -> str:
        w = self.const(RNG.standard_normal((cout, cin // group, k, k)).astype(np.float32))
        ins = [x, w]
        if bias:
            ins.append(self.const(RNG.standard_normal(cout).astype(np.float32), "b"))
        return self.op("Conv", *ins, group=group, pads=[k // 2] * 4)

    def convt(self, x: str, cin: int, cout: int, group: int = 1) -> str:
        w = self.const(RNG.standard_normal((cin, cout // group, 2, 2)).astype(np.float32))
        b = self.const(RNG.standard_normal(cout).astype(np.float32), "b")
        return self.op("ConvTranspose", x, w, b, group=group, strides=[2, 2])

    def bn(self, x: str, c: int) -> str:
        ps = [RNG.uniform(0.5, 1.5, c), RNG.standard_normal(c), RNG.standard_normal(c) * 0.1, RNG.uniform(0.5, 2, c)]
        return self.op("BatchNormalization", x, *[self.const(p.astype(np.float32), "bn") for p in ps])

    def linear(self, x: str, k: int, n: int, bias: bool = True) -> str:
        y = self.op("MatMul", x, self.const(RNG.standard_normal((k, n)).astype(np.float32)))
        if bias:
            y = self.op("Add", y, self.const(RNG.standard_normal(n).astype(np.float32), "b"))
        return y

    def build(self, inputs: dict[str, list[int | str]], outputs: list[str],
              dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
        g = helper.make_graph(
            self.nodes, "t",
            [helper.make_tensor_value_info(n, dtype, s) for n, s in inputs.items()],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
            self.inits,
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = 8
        return m


def conv_sandwich(middle, cin: int = 8, c: int = 8, hw: int = 6, opset: int = 17) -> onnx.ModelProto:
    """input -> Conv(cin->c) -> middle(g, y) -> Conv(->4) -> output: a producer and a consumer around the op."""
    g = G(opset)
    y = g.conv("x", 3, c, 3)
    y, c2 = middle(g, y)
    out = g.conv(y, c2, 4, 1)
    return g.build({"x": ["N", 3, hw, hw]}, [out])
