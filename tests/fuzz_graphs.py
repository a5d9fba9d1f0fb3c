"""Random valid ONNX graphs from the supported operator set, as hypothesis strategies.

Two families, each a short random stack of blocks that keeps the running tensor's channel count ``c``:

* ``conv_nets``: NCHW convnets with plain, grouped and depthwise convs, BatchNorm, activations, residual
  adds, concats, splits, multiplicative gates and same-size pools, ending in a global-pool/Flatten/Gemm,
  a Flatten or Reshape straight into Gemm (the reshape constant must be rewritten), or a last conv;
* ``sequence_nets``: [N, S, D] token models with FFN blocks (MatMul-act-MatMul + residual), attention
  (Q/K/V MatMuls, Reshape into heads, Transpose, Softmax, MatMul, Reshape back, output projection) and
  LayerNorm, ending in a MatMul head.

Every graph is shape-checked by ONNX (``check_model(full_check=True)``) before it is returned, so a
failure in a property test is graphprune's, not the generator's.  Weights are scaled by 1/sqrt(fan-in)
so that activations stay O(1) and the relative proof tolerance means something.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
Draw = Callable[[st.SearchStrategy[Any]], Any]


@dataclass
class Net:
    """A graph under construction; ``log`` names the blocks (shown by hypothesis on failure)."""

    rng: np.random.Generator
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    k: int = 0

    def name(self, base: str) -> str:
        self.k += 1
        return f"{base}_{self.k}"

    def const(self, value: np.ndarray, base: str = "w") -> str:
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), n))
        return n

    def weight(self, shape: tuple[int, ...], fan_in: int) -> str:
        return self.const((self.rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))).astype(np.float32))

    def op(self, op: str, *inputs: str, n_out: int = 1, **attrs: object) -> list[str]:
        name = self.name(op.lower())
        outs = [f"{name}_out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
        return outs

    def op1(self, op: str, *inputs: str, **attrs: object) -> str:
        return self.op(op, *inputs, **attrs)[0]

    # ------------------------------------------------------------------------------- conv blocks
    def conv(self, x: str, cin: int, cout: int, k: int = 1, group: int = 1, bias: bool = True) -> str:
        w = self.weight((cout, cin // group, k, k), fan_in=cin // group * k * k)
        ins = [x, w] + ([self.const(self.rng.standard_normal(cout).astype(np.float32) * 0.1, "b")] if bias else [])
        return self.op1("Conv", *ins, group=group, pads=[k // 2] * 4, kernel_shape=[k, k])

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        ps = [r.uniform(0.5, 1.5, c), r.standard_normal(c) * 0.1, r.standard_normal(c) * 0.1, r.uniform(0.5, 1.5, c)]
        return self.op1("BatchNormalization", x, *[self.const(p.astype(np.float32), "bn") for p in ps])

    def act(self, x: str, kind: str) -> str:
        if kind == "none":
            return x
        if kind == "LeakyRelu":
            return self.op1("LeakyRelu", x, alpha=0.1)
        return self.op1(kind, x)

    def matmul(self, x: str, k: int, n: int, bias: bool = True) -> str:
        y = self.op1("MatMul", x, self.weight((k, n), fan_in=k))
        if bias:
            y = self.op1("Add", y, self.const(self.rng.standard_normal(n).astype(np.float32) * 0.1, "b"))
        return y

    def model(self, inputs: list[onnx.ValueInfoProto], output: str, out_shape: list[int | str]) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, "fuzz", inputs,
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
        m.ir_version = 8
        onnx.checker.check_model(m, full_check=True)
        return m


ACTS = ["Relu", "none", "Sigmoid", "LeakyRelu", "Tanh"]
WIDTH = st.integers(2, 10)


def _divisors(n: int) -> list[int]:
    return [d for d in range(2, n + 1) if n % d == 0]


def _conv_block(draw: Draw, net: Net, x: str, c: int) -> tuple[str, int]:
    kind = draw(st.sampled_from(["conv", "conv", "grouped", "depthwise", "residual", "concat", "split",
                                 "gate", "pool", "concat_self", "permute", "slice", "convtranspose"]))
    act = str(draw(st.sampled_from(ACTS)))
    if kind == "grouped" and not _divisors(c):
        kind = "conv"
    net.log.append(f"{kind}(c={c}, act={act})")
    if kind == "conv":
        cout = int(draw(WIDTH))
        y = net.conv(x, c, cout, k=int(draw(st.sampled_from([1, 3]))), bias=bool(draw(st.booleans())))
        if draw(st.booleans()):
            y = net.bn(y, cout)
        return net.act(y, act), cout
    if kind == "grouped":
        g = int(draw(st.sampled_from(_divisors(c))))
        cout = g * int(draw(st.integers(1, 3)))
        return net.act(net.conv(x, c, cout, k=3, group=g), act), cout
    if kind == "depthwise":
        mult = int(draw(st.integers(1, 2)))
        return net.act(net.bn(net.conv(x, c, c * mult, k=3, group=c, bias=False), c * mult), act), c * mult
    if kind == "residual":
        mid = int(draw(WIDTH))
        y = net.conv(net.act(net.conv(x, c, mid, k=3), act), mid, c)
        return net.op1("Add", x, y), c
    if kind == "concat":
        widths = draw(st.lists(WIDTH, min_size=2, max_size=3))
        branches = [net.act(net.conv(x, c, int(w)), act) for w in widths]
        return net.op1("Concat", *branches, axis=1), sum(int(w) for w in widths)
    if kind == "split" and c >= 2:
        s1 = int(draw(st.integers(1, c - 1)))
        a, b = net.op("Split", x, net.const(np.array([s1, c - s1], np.int64), "split"), n_out=2, axis=1)
        cout = int(draw(WIDTH))
        ya, yb = net.conv(a, s1, cout), net.conv(b, c - s1, cout)
        if draw(st.booleans()):
            return net.act(net.op1("Add", ya, yb), act), cout
        return net.act(net.op1("Concat", ya, yb, axis=1), act), 2 * cout
    if kind == "concat_self":  # the block's input and a branch side by side
        cout = int(draw(WIDTH))
        return net.op1("Concat", x, net.act(net.conv(x, c, cout), act), axis=1), c + cout
    if kind == "permute" and c >= 3:  # split in three, concatenate in another order
        s1 = int(draw(st.integers(1, c - 2)))
        s2 = int(draw(st.integers(1, c - s1 - 1)))
        parts = net.op("Split", x, net.const(np.array([s1, s2, c - s1 - s2], np.int64), "split"), n_out=3, axis=1)
        order = draw(st.permutations([0, 1, 2]))
        return net.act(net.op1("Concat", *[parts[i] for i in order], axis=1), act), c
    if kind == "slice" and c >= 2:  # keep a channel window
        start = int(draw(st.integers(0, c - 2)))
        end = int(draw(st.integers(start + 1, c)))
        y = net.op1("Slice", x, net.const(np.array([start], np.int64), "starts"),
                    net.const(np.array([end], np.int64), "ends"), net.const(np.array([1], np.int64), "axes"))
        cout = int(draw(WIDTH))
        return net.act(net.conv(y, end - start, cout), act), cout
    if kind == "convtranspose":
        g = int(draw(st.sampled_from([1, *_divisors(c)])))
        cout = g * int(draw(st.integers(1, 3)))
        w = net.weight((c, cout // g, 3, 3), fan_in=c // g * 9)
        b = net.const(net.rng.standard_normal(cout).astype(np.float32) * 0.1, "b")
        return net.act(net.op1("ConvTranspose", x, w, b, group=g, pads=[1, 1, 1, 1]), act), cout
    if kind == "gate":
        cout = int(draw(WIDTH))
        return net.op1("Mul", net.conv(x, c, cout), net.op1("Sigmoid", net.conv(x, c, cout))), cout
    pool = str(draw(st.sampled_from(["MaxPool", "AveragePool"])))
    return net.op1(pool, x, kernel_shape=[3, 3], pads=[1, 1, 1, 1]), c


@st.composite
def conv_nets(draw: Draw) -> tuple[onnx.ModelProto, list[str]]:
    net = Net(np.random.default_rng(int(draw(st.integers(0, 2**32 - 1)))))
    hw = int(draw(st.sampled_from([4, 6])))
    c = int(draw(st.integers(2, 6)))
    x = net.conv("x", 3, c, k=3)
    for _ in range(int(draw(st.integers(1, 4)))):
        x, c = _conv_block(draw, net, x, c)
    head = str(draw(st.sampled_from(["gap", "flatten", "reshape", "conv"])))
    net.log.append(f"head {head}(c={c})")
    n_out = 5
    if head == "conv":
        y = net.conv(x, c, n_out)
        return net.model([_image(hw)], y, ["N", n_out, hw, hw]), net.log
    if head == "gap":
        x, k = net.op1("Flatten", net.op1("GlobalAveragePool", x)), c
    elif head == "flatten":
        x, k = net.op1("Flatten", x, axis=1), c * hw * hw
    else:
        dims = [0, c * hw * hw] if draw(st.booleans()) else [0, -1]
        x, k = net.op1("Reshape", x, net.const(np.array(dims, np.int64), "shape")), c * hw * hw
    w = net.weight((n_out, k), fan_in=k)
    y = net.op1("Gemm", x, w, net.const(np.zeros(n_out, np.float32), "b"), transB=1)
    return net.model([_image(hw)], y, ["N", n_out]), net.log


def _image(hw: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, hw, hw])


# ---------------------------------------------------------------------------------- sequence nets
def _attention(draw: Draw, net: Net, x: str, d: int) -> str:
    heads = int(draw(st.integers(1, 3)))
    dh = int(draw(st.sampled_from([2, 4])))
    inner = heads * dh
    net.log.append(f"attention(d={d}, heads={heads}, head_dim={dh})")
    split_dims = draw(st.sampled_from([[0, 0, heads, dh], [0, -1, heads, dh], [0, 0, -1, dh], [0, 0, heads, -1]]))
    split = net.const(np.array(split_dims, np.int64), "heads_shape")
    q, k, v = (net.op1("Reshape", net.matmul(x, d, inner), split) for _ in range(3))
    q = net.op1("Transpose", q, perm=[0, 2, 1, 3])
    kt = net.op1("Transpose", k, perm=[0, 2, 3, 1])
    v = net.op1("Transpose", v, perm=[0, 2, 1, 3])
    scores = net.op1("Mul", net.op1("MatMul", q, kt), net.const(np.array(1 / np.sqrt(dh), np.float32), "scale"))
    ctx = net.op1("MatMul", net.op1("Softmax", scores, axis=-1), v)
    ctx = net.op1("Transpose", ctx, perm=[0, 2, 1, 3])
    merge_dims = draw(st.sampled_from([[0, 0, inner], [0, 0, -1], [0, -1, inner]]))
    ctx = net.op1("Reshape", ctx, net.const(np.array(merge_dims, np.int64), "merge_shape"))
    return net.op1("Add", x, net.matmul(ctx, inner, d))


def _seq_block(draw: Draw, net: Net, x: str, d: int) -> str:
    kind = str(draw(st.sampled_from(["ffn", "attention", "layernorm"])))
    if kind == "attention":
        return _attention(draw, net, x, d)
    if kind == "layernorm":
        net.log.append(f"layernorm(d={d})")
        scale, bias = net.const(np.ones(d, np.float32), "ln_s"), net.const(np.zeros(d, np.float32), "ln_b")
        return net.op1("LayerNormalization", x, scale, bias, axis=-1)
    hidden = int(draw(st.integers(2, 12)))
    act = str(draw(st.sampled_from(["Relu", "Sigmoid", "Tanh"])))
    net.log.append(f"ffn(d={d}, hidden={hidden}, act={act})")
    return net.op1("Add", x, net.matmul(net.act(net.matmul(x, d, hidden), act), hidden, d))


@st.composite
def sequence_nets(draw: Draw) -> tuple[onnx.ModelProto, list[str]]:
    net = Net(np.random.default_rng(int(draw(st.integers(0, 2**32 - 1)))))
    d = int(draw(st.integers(2, 8)))
    x = net.matmul("x", 4, d)
    for _ in range(int(draw(st.integers(1, 3)))):
        x = _seq_block(draw, net, x, d)
    y = net.matmul(x, d, 3)
    seq = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 4])
    return net.model([seq], y, ["N", 5, 3]), net.log


def graphs() -> st.SearchStrategy[tuple[onnx.ModelProto, list[str]]]:
    """Either family."""
    return st.one_of(conv_nets(), sequence_nets())
