"""Corpus models built in code: small deterministic graphs, each broken (or merely unusual) in one way.

Each case function writes its files into an empty folder and returns the MODEL argument for the CLI.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
OUT4 = ["N", 4, 8, 8]  # what every corpus model's trunk outputs
HUGE_BYTES = 2**31 + 4096  # just over protobuf's 2 GiB message limit (a sparse file: no disk used)


# ------------------------------------------------------------------------------------ graph helpers
class Builder:
    """Nodes and initializers with deterministic weights (one seed per builder)."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.k = 0

    def fresh(self, base: str) -> str:
        self.k += 1
        return f"{base}{self.k}"

    def const(self, value: np.ndarray, base: str = "w") -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op: str, *inputs: str, domain: str = "", **attrs: object) -> str:
        name = self.fresh(op.lower())
        out = f"{name}_out"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=name, domain=domain, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 3) -> str:
        w = self.const((self.rng.standard_normal((cout, cin, k, k)) * 0.3).astype(np.float32))
        b = self.const(self.rng.standard_normal(cout).astype(np.float32), "b")
        return self.op("Conv", x, w, b, pads=[k // 2] * 4)

    def matmul(self, x: str, k: int, n: int) -> str:
        return self.op("MatMul", x, self.const((self.rng.standard_normal((k, n)) * 0.3).astype(np.float32)))

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: Mapping[str, Sequence[int | str]],
              opset: int = OPSET, extra_opsets: Mapping[str, int] | None = None) -> onnx.ModelProto:
        """A model whose graph outputs are float tensors of the given shapes (the ONNX checker wants a
        shape on every graph input and output)."""
        g = helper.make_graph(self.nodes, "corpus", inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, list(s)) for o, s in outputs.items()],
                              self.inits)
        ops = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
        m = helper.make_model(g, opset_imports=ops)
        m.ir_version = 8
        return m


def image_input(name: str = "x", c: int = 3, hw: int = 8) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", c, hw, hw])


def base_model(seed: int = 0, opset: int = OPSET) -> onnx.ModelProto:
    """Conv(3->8)-Relu-Conv(8->8)-Relu-Conv(8->4): two prunable groups, nothing unusual."""
    b = Builder(seed)
    y = b.op("Relu", b.conv("x", 3, 8))
    y = b.op("Relu", b.conv(y, 8, 8))
    return b.model([image_input()], {b.conv(y, 8, 4, 1): OUT4}, opset=opset)


def prunable_trunk(b: Builder) -> str:
    """Conv(3->8)-Relu-Conv(8->8)-Relu-Conv(8->4): the safe part of every partly understood model."""
    y = b.op("Relu", b.conv("x", 3, 8))
    y = b.op("Relu", b.conv(y, 8, 8))
    return b.conv(y, 8, 4, 1)


def raw_model(graph: onnx.GraphProto, opset: int = OPSET) -> onnx.ModelProto:
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def save(model: onnx.ModelProto, d: Path, name: str = "model.onnx") -> Path:
    p = d / name
    p.write_bytes(model.SerializeToString())
    return p


# -------------------------------------------------------------------------------- file-level cases
def truncated(d: Path) -> Path:
    data = base_model().SerializeToString()
    p = d / "model.onnx"
    p.write_bytes(data[: len(data) // 2])
    return p


def truncated_tail(d: Path) -> Path:
    data = base_model().SerializeToString()
    p = d / "model.onnx"
    p.write_bytes(data[:-7])
    return p


def random_bytes(d: Path) -> Path:
    p = d / "model.onnx"
    p.write_bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return p


def text_file(d: Path) -> Path:
    p = d / "model.onnx"
    p.write_text("hello, this is not a model\n" * 20)
    return p


def tensor_proto(d: Path) -> Path:
    """A valid protobuf message of another type: parses as an (almost empty) ModelProto."""
    p = d / "model.onnx"
    p.write_bytes(numpy_helper.from_array(np.arange(64, dtype=np.float32), "t").SerializeToString())
    return p


def empty(d: Path) -> Path:
    p = d / "model.onnx"
    p.write_bytes(b"")
    return p


def directory(d: Path) -> Path:
    p = d / "model.onnx"
    p.mkdir()
    (p / "inner.txt").write_text("a folder named like a model\n")
    return p


def missing(d: Path) -> Path:
    return d / "model.onnx"


def huge(d: Path) -> Path:
    """Over 2 GiB on paper, a few bytes on disk: a valid model head, then a hole."""
    p = d / "model.onnx"
    p.write_bytes(base_model().SerializeToString())
    os.truncate(p, HUGE_BYTES)
    return p


# -------------------------------------------------------------------------------- structural cases
def cycle(d: Path) -> Path:
    nodes = [helper.make_node("Add", ["x", "b_out"], ["a_out"], name="a"),
             helper.make_node("Relu", ["a_out"], ["b_out"], name="b")]
    g = helper.make_graph(nodes, "cycle", [image_input()],
                          [helper.make_tensor_value_info("b_out", TensorProto.FLOAT, ["N", 3, 8, 8])])
    return save(raw_model(g), d)


def unsorted(d: Path) -> Path:
    """Valid, but nodes are not in topological order (ONNX requires it; exporters sometimes don't)."""
    m = base_model()
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(reversed(nodes))
    return save(m, d)


def dangling_node_input(d: Path) -> Path:
    m = base_model()
    m.graph.node[2].input[0] = "ghost"
    return save(m, d)


def dangling_graph_output(d: Path) -> Path:
    m = base_model()
    m.graph.output.append(helper.make_tensor_value_info("nowhere", TensorProto.FLOAT, OUT4))
    return save(m, d)


def unused_graph_input(d: Path) -> Path:
    """A graph input nothing reads: valid ONNX, must simply be ignored."""
    m = base_model()
    m.graph.input.append(helper.make_tensor_value_info("spare", TensorProto.FLOAT, ["N", 5]))
    return save(m, d)


def duplicate_output(d: Path) -> Path:
    m = base_model()
    m.graph.node[3].output[0] = m.graph.node[1].output[0]  # two nodes write the same tensor
    return save(m, d)


def duplicate_initializer(d: Path) -> Path:
    m = base_model()
    dup = onnx.TensorProto()
    dup.CopyFrom(m.graph.initializer[0])
    m.graph.initializer.append(dup)
    return save(m, d)


def duplicate_graph_input(d: Path) -> Path:
    m = base_model()
    m.graph.input.append(image_input())
    return save(m, d)


def initializer_shadows_node_output(d: Path) -> Path:
    m = base_model()
    out = m.graph.node[1].output[0]
    m.graph.initializer.append(numpy_helper.from_array(np.zeros((1, 8, 8, 8), np.float32), out))
    return save(m, d)


def duplicate_node_names(d: Path) -> Path:
    """Node names need not be unique in ONNX; every node here is called 'n'."""
    m = base_model()
    for n in m.graph.node:
        n.name = "n"
    return save(m, d)


def no_nodes(d: Path) -> Path:
    """The graph input is the graph output: valid, nothing to prune."""
    g = helper.make_graph([], "empty", [image_input()], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])])
    return save(raw_model(g), d)


def output_without_shape(d: Path) -> Path:
    """A graph output typed but without a shape: ONNX Runtime runs it, the ONNX checker refuses it."""
    m = base_model()
    m.graph.output[0].type.tensor_type.ClearField("shape")
    return save(m, d)


def sparse_initializer(d: Path) -> Path:
    """A used sparse initializer (a valid ONNX feature): its consumer stays frozen, the rest prunes."""
    b = Builder()
    y = b.op("Relu", prunable_trunk(b))
    bias = b.op("Reshape", "sparse_bias", b.const(np.array([1, 4, 1, 1], np.int64), "shape"))
    y = b.op("Add", y, bias)
    m = b.model([image_input()], {y: OUT4})
    values = numpy_helper.from_array(np.array([1.0, -2.0], np.float32), "sparse_bias")
    indices = numpy_helper.from_array(np.array([1, 3], np.int64), "sparse_bias_idx")
    m.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4]))
    return save(m, d)


# ---------------------------------------------------------------------------------------- opsets
def future_opset(d: Path) -> Path:
    return save(base_model(opset=99), d)


def old_opset(d: Path) -> Path:
    """Opset 9: converted to 13 by the ONNX version converter, then pruned."""
    return save(base_model(opset=9), d)


def untested_opset(d: Path) -> Path:
    return save(base_model(opset=24), d)


def ancient_opset(d: Path) -> Path:
    return save(base_model(opset=1), d)


def future_ir_version(d: Path) -> Path:
    m = base_model()
    m.ir_version = 99
    return save(m, d)


def no_default_opset(d: Path) -> Path:
    m = base_model()
    del m.opset_import[:]
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    return save(m, d)


def unknown_op(d: Path) -> Path:
    """An ai.onnx op that does not exist."""
    b = Builder()
    y = b.op("FrobnicateChannels", prunable_trunk(b))
    return save(b.model([image_input()], {y: OUT4}), d)


def custom_domain(d: Path) -> Path:
    """A custom-domain op no runtime knows: analysable (frozen around it), not runnable."""
    b = Builder()
    y = b.op("Relu", b.conv("x", 3, 8))
    y = b.op("Relu", b.conv(y, 8, 8))
    y = b.op("Frobnicate", y, domain="com.example")
    y = b.conv(y, 8, 4, 1)
    return save(b.model([image_input()], {y: OUT4}, extra_opsets={"com.example": 1}), d)


def contrib_domain(d: Path) -> Path:
    """A custom-domain op ONNX Runtime implements (com.microsoft::Gelu) after the prunable trunk."""
    b = Builder()
    y = b.op("Gelu", prunable_trunk(b), domain="com.microsoft")
    return save(b.model([image_input()], {y: OUT4}, extra_opsets={"com.microsoft": 1}), d)


# ----------------------------------------------------------------------------------- control flow
def if_model(d: Path) -> Path:
    b = Builder()
    t = prunable_trunk(b)
    then_g = helper.make_graph([helper.make_node("Relu", [t], ["then_y"])], "then", [],
                               [helper.make_tensor_value_info("then_y", TensorProto.FLOAT, OUT4)])
    else_g = helper.make_graph([helper.make_node("Neg", [t], ["else_y"])], "else", [],
                               [helper.make_tensor_value_info("else_y", TensorProto.FLOAT, OUT4)])
    b.nodes.append(helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_g, else_branch=else_g))
    return save(b.model([image_input(), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])], {"y": OUT4}), d)


def loop(d: Path) -> Path:
    b = Builder()
    t = prunable_trunk(b)
    trip = b.const(np.array(3, np.int64), "trip")
    cond = b.const(np.array(True), "cond")
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Add", ["s_in", t], ["s_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_in", TensorProto.FLOAT, OUT4)],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_out", TensorProto.FLOAT, OUT4)],
    )
    b.nodes.append(helper.make_node("Loop", [trip, cond, t], ["y"], name="loop", body=body))
    return save(b.model([image_input()], {"y": OUT4}), d)


def scan(d: Path) -> Path:
    b = Builder()
    t = prunable_trunk(b)
    body = helper.make_graph(
        [helper.make_node("Relu", ["e_in"], ["e_out"])], "body",
        [helper.make_tensor_value_info("e_in", TensorProto.FLOAT, OUT4[1:])],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, OUT4[1:])],
    )
    b.nodes.append(helper.make_node("Scan", [t], ["y"], name="scan", body=body, num_scan_inputs=1))
    return save(b.model([image_input()], {"y": OUT4}), d)


# -------------------------------------------------------------------------------------- recurrent
def recurrent(op: str) -> Callable[[Path], Path]:
    gates = {"LSTM": 4, "GRU": 3}[op]

    def make(d: Path) -> Path:
        b = Builder()
        hidden, feat = 6, 5
        w = b.const((b.rng.standard_normal((1, gates * hidden, feat)) * 0.3).astype(np.float32))
        r = b.const((b.rng.standard_normal((1, gates * hidden, hidden)) * 0.3).astype(np.float32))
        b.nodes.append(helper.make_node(op, ["seq", w, r], ["rnn_y"], name=op.lower(), hidden_size=hidden))
        y = b.op("Squeeze", "rnn_y", b.const(np.array([1], np.int64), "axes"))  # [S, N, hidden]
        y = b.op("Relu", b.matmul(y, hidden, 8))
        y = b.matmul(y, 8, 3)  # the 8-wide hidden layer is prunable
        seq = helper.make_tensor_value_info("seq", TensorProto.FLOAT, ["S", "N", feat])
        return save(b.model([seq], {y: ["S", "N", 3]}), d)

    return make


# -------------------------------------------------------------------------------------- quantized
def qdq(d: Path) -> Path:
    """QDQ-quantized first conv, float trunk after it."""
    b = Builder()
    scale, zp = b.const(np.array(0.05, np.float32), "s"), b.const(np.array(0, np.int8), "zp")
    xq = b.op("QuantizeLinear", "x", scale, zp)
    xdq = b.op("DequantizeLinear", xq, scale, zp)
    wq = b.const(b.rng.integers(-20, 20, (8, 3, 3, 3)).astype(np.int8), "wq")
    wdq = b.op("DequantizeLinear", wq, scale, zp)
    y = b.op("Relu", b.op("Conv", xdq, wdq, pads=[1, 1, 1, 1]))
    y = b.op("Relu", b.conv(y, 8, 8))
    return save(b.model([image_input()], {b.conv(y, 8, 4, 1): OUT4}), d)


def conv_integer(d: Path) -> Path:
    b = Builder()
    w = b.const(b.rng.integers(0, 20, (8, 3, 3, 3)).astype(np.uint8), "wq")
    y = b.op("ConvInteger", "xq", w, pads=[1, 1, 1, 1])
    y = b.op("Relu", b.op("Cast", y, to=TensorProto.FLOAT))
    y = b.op("Relu", b.conv(y, 8, 8))
    xq = helper.make_tensor_value_info("xq", TensorProto.UINT8, ["N", 3, 8, 8])
    return save(b.model([xq], {b.conv(y, 8, 4, 1): OUT4}), d)


def matmul_integer(d: Path) -> Path:
    b = Builder()
    w = b.const(b.rng.integers(0, 20, (5, 8)).astype(np.uint8), "wq")
    y = b.op("Cast", b.op("MatMulInteger", "xq", w), to=TensorProto.FLOAT)
    y = b.op("Relu", b.matmul(y, 8, 8))
    xq = helper.make_tensor_value_info("xq", TensorProto.UINT8, ["N", 5])
    return save(b.model([xq], {b.matmul(y, 8, 3): ["N", 3]}), d)


# ------------------------------------------------------------------------------------------ shapes
def dynamic_rank(d: Path) -> Path:
    """The input has a type but no shape at all: its rank is unknown."""
    m = base_model()
    m.graph.input[0].type.tensor_type.ClearField("shape")
    return save(m, d)


def zero_channels(d: Path) -> Path:
    """A conv with 0 output channels: a 0-channel space before any pruning."""
    b = Builder()
    y = b.op("Relu", b.conv("x", 3, 8))
    y = b.conv(y, 8, 0, 1)
    y = b.op("ReduceSum", y, b.const(np.array([1], np.int64), "axes"), keepdims=1)
    return save(b.model([image_input()], {y: ["N", 1, 8, 8]}), d)


def single_channel_group(d: Path) -> Path:
    """A 1-channel bottleneck: no ratio may prune it to 0."""
    b = Builder()
    y = b.op("Relu", b.conv("x", 3, 1))
    y = b.op("Relu", b.conv(y, 1, 8))
    return save(b.model([image_input()], {b.conv(y, 8, 4, 1): OUT4}), d)
