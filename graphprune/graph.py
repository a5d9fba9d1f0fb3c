"""A read-only index over an ONNX graph: producers, consumers, shapes and constant values.

Analysis works on this view and never mutates the model.  Weights may live in initializers (PyTorch
style) or in ``Constant`` nodes (PaddlePaddle style); both are constants here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import onnx
from onnx import numpy_helper

Dim = int | str | None  # int: known; str: symbolic (dim_param); None: unknown
Shape = tuple[Dim, ...]


@dataclass(frozen=True)
class NodeRef:
    """Stable handle for a node: its index in the (topologically sorted) node list and its name."""

    index: int
    name: str
    op_type: str
    domain: str


def _shape_of(type_proto: onnx.TypeProto) -> Shape | None:
    if not type_proto.HasField("tensor_type"):
        return None
    tt = type_proto.tensor_type
    if not tt.HasField("shape"):
        return None
    dims: list[Dim] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:  # some exporters write -1 for "unknown"
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """Value of a ``Constant`` node, whatever attribute form it uses."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None


_CACHE_LIMIT = 1 << 20  # elements

_SAME_SHAPE_OPS = frozenset({
    "GroupNormalization", "LayerNormalization", "RMSNormalization", "InstanceNormalization",
    "BatchNormalization", "Gelu", "HardSwish", "Mish", "Swish", "Identity", "Dropout",
})


def _subgraph_reads(node: onnx.NodeProto) -> list[str]:
    """Names a node's subgraphs read from the enclosing scope."""
    out: list[str] = []
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else (
            list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else [])
        for g in graphs:
            local = {t.name for t in g.initializer} | {i.name for i in g.input}
            for n in g.node:
                for inp in list(n.input) + _subgraph_reads(n):
                    if inp and inp not in local:
                        out.append(inp)
                local.update(o for o in n.output if o)
    return list(dict.fromkeys(out))


class GraphView:
    """Index of one ONNX graph.  Build once per analysis; cheap queries afterwards."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        g = model.graph
        self.graph = g
        self.opsets: dict[str, int] = {
            ("" if imp.domain == "ai.onnx" else imp.domain): int(imp.version) for imp in model.opset_import
        }
        self.nodes: list[onnx.NodeProto] = list(g.node)
        self.node_names: list[str] = [n.name or f"{n.op_type}_{i}" for i, n in enumerate(self.nodes)]
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        # outer-scope tensors that subgraphs (If/Loop/Scan bodies) read without listing them as inputs
        self.implicit_inputs: dict[int, list[str]] = {}
        for i, n in enumerate(self.nodes):
            for o in n.output:
                if o:
                    self.producer[o] = i
            implicit = _subgraph_reads(n)
            if implicit:
                self.implicit_inputs[i] = implicit
            for inp in dict.fromkeys(list(n.input) + implicit):
                if inp:
                    self.consumers.setdefault(inp, []).append(i)
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in g.initializer}
        self.graph_inputs: list[str] = [i.name for i in g.input if i.name not in self.initializers]
        self.graph_outputs: list[str] = [o.name for o in g.output]
        self._output_set = set(self.graph_outputs)
        self.shapes: dict[str, Shape] = {}
        self.dtypes: dict[str, int] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            s = _shape_of(vi.type)
            if s is not None:
                self.shapes[vi.name] = s
            if vi.type.HasField("tensor_type"):
                self.dtypes[vi.name] = vi.type.tensor_type.elem_type
        for t in g.initializer:
            self.shapes[t.name] = tuple(int(d) for d in t.dims)
            self.dtypes[t.name] = t.data_type
        self._const_nodes: dict[str, onnx.NodeProto] = {}
        for n in self.nodes:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.output:
                self._const_nodes[n.output[0]] = n
                for attr in n.attribute:
                    if attr.name == "value":
                        self.shapes[n.output[0]] = tuple(int(d) for d in attr.t.dims)
                        self.dtypes[n.output[0]] = attr.t.data_type
        self._const_cache: dict[str, np.ndarray | None] = {}
        self._complete_shapes()

    def _complete_shapes(self) -> None:
        """Fill output shapes ONNX inference leaves out for shape-preserving ops (e.g. function ops
        such as GroupNormalization in some onnx versions): output 0 has input 0's shape."""
        for n in self.nodes:
            if n.op_type in _SAME_SHAPE_OPS and n.input and n.output and n.output[0] not in self.shapes:
                s = self.shapes.get(n.input[0])
                if s is not None:
                    self.shapes[n.output[0]] = s
                    if n.input[0] in self.dtypes:
                        self.dtypes[n.output[0]] = self.dtypes[n.input[0]]
            elif n.op_type == "Slice" and len(n.input) >= 4 and n.input[3] and n.output:
                self._complete_slice(n)
            elif n.op_type == "Unsqueeze" and n.output:
                self._complete_unsqueeze(n)
            elif n.op_type == "Reshape" and len(n.input) > 1 and n.output:
                self._complete_reshape(n)

    def _merge_shape(self, name: str, new: list[Dim]) -> None:
        """Keep what inference knew; fill dims it left unknown (None or a fresh 'unk__' symbol)."""
        old = self.shapes.get(name)
        if old is None or len(old) != len(new):
            if old is None:
                self.shapes[name] = tuple(new)
            return
        merged = [o if (isinstance(o, int) or (isinstance(o, str) and not o.startswith("unk__")) or n is None)
                  else n for o, n in zip(old, new, strict=True)]
        self.shapes[name] = tuple(merged)

    def _complete_unsqueeze(self, n: onnx.NodeProto) -> None:
        src = self.shapes.get(n.input[0])
        axes_attr = next((list(a.ints) for a in n.attribute if a.name == "axes"), None)
        axes = axes_attr if axes_attr is not None else (
            self.constant_value(n.input[1]) if len(n.input) > 1 and self.is_constant(n.input[1]) else None)
        if src is None or axes is None:
            return
        r = len(src) + len(np.ravel(axes))
        ins = {int(a) + r if a < 0 else int(a) for a in np.ravel(axes)}
        it = iter(src)
        self._merge_shape(n.output[0], [1 if k in ins else next(it) for k in range(r)])

    def _complete_reshape(self, n: onnx.NodeProto) -> None:
        """Positive entries of a partly computed target are the output dims."""
        out = self.shapes.get(n.output[0])
        if out is None or all(isinstance(d, int) for d in out):
            return
        part = self.folder.partial(n.input[1])
        if part is None or len(np.ravel(part[0])) != len(out):
            return
        vals, known = np.ravel(part[0]), np.ravel(part[1])
        self._merge_shape(n.output[0], [int(v) if k and v > 0 else None for v, k in zip(vals, known, strict=True)])

    def _complete_slice(self, n: onnx.NodeProto) -> None:
        """A Slice with dynamic bounds keeps the dims of the axes it does not slice."""
        src = self.shapes.get(n.input[0])
        axes = self.constant_value(n.input[3]) if self.is_constant(n.input[3]) else None
        if src is None or axes is None:
            return
        r = len(src)
        sliced = {int(a) + r if a < 0 else int(a) for a in np.asarray(axes).ravel()}
        out = list(self.shapes.get(n.output[0]) or [None] * r)
        if len(out) != r:
            return
        for a in range(r):
            if a not in sliced and (out[a] is None or (isinstance(out[a], str) and str(out[a]).startswith("unk__"))):
                out[a] = src[a]
        self.shapes[n.output[0]] = tuple(out)

    # --- constants -------------------------------------------------------------------------------
    def is_constant(self, name: str) -> bool:
        return name in self.initializers or name in self._const_nodes

    def constant_proto(self, name: str) -> onnx.TensorProto | None:
        """The TensorProto holding a constant (initializer or Constant ``value``), if any."""
        if name in self.initializers:
            return self.initializers[name]
        node = self._const_nodes.get(name)
        if node is not None:
            for attr in node.attribute:
                if attr.name == "value":
                    return attr.t
        return None

    def constant_value(self, name: str) -> np.ndarray | None:
        if not name or not self.is_constant(name):
            return None
        if name in self._const_cache:
            return self._const_cache[name]
        if name in self.initializers:
            from graphprune.tensors import read

            value: np.ndarray | None = read(self.initializers[name])
        else:
            value = constant_node_value(self._const_nodes[name])
        if value is not None and value.size <= _CACHE_LIMIT:  # big weights are read when needed, not kept
            self._const_cache[name] = value
        return value

    def small_constant(self, name: str, limit: int = 4096) -> np.ndarray | None:
        """Value of a constant only if it is small (shape vectors, axes, scalars)."""
        shape = self.shapes.get(name)
        if shape is not None and all(isinstance(d, int) for d in shape):
            size = int(np.prod([int(d) for d in shape])) if shape else 1  # type: ignore[arg-type]
            if size > limit:
                return None
        return self.constant_value(name)

    @cached_property
    def folder(self):
        from graphprune.shape_fold import ShapeFolder

        return ShapeFolder(self)

    def known_value(self, name: str) -> np.ndarray | None:
        """A small integer value that is constant or computable from static shapes."""
        return self.folder.known(name) if name else None

    # --- shapes ----------------------------------------------------------------------------------
    def shape(self, name: str) -> Shape | None:
        if name in self.shapes:
            return self.shapes[name]
        if name in self._const_nodes:
            v = self.constant_value(name)
            if v is not None:
                return tuple(int(d) for d in v.shape)
        return None

    def rank(self, name: str) -> int | None:
        s = self.shape(name)
        return None if s is None else len(s)

    def dim(self, name: str, axis: int) -> Dim:
        s = self.shape(name)
        if s is None:
            return None
        if axis < 0:
            axis += len(s)
        if not 0 <= axis < len(s):
            return None
        return s[axis]

    def static_dim(self, name: str, axis: int) -> int | None:
        d = self.dim(name, axis)
        return d if isinstance(d, int) else None

    def is_graph_output(self, name: str) -> bool:
        return name in self._output_set

    def node_ref(self, index: int) -> NodeRef:
        n = self.nodes[index]
        return NodeRef(index, self.node_names[index], n.op_type, n.domain or "")

    def opset_for(self, domain: str) -> int:
        return self.opsets.get("" if domain == "ai.onnx" else domain, 0)

    @cached_property
    def unknown_shape_tensors(self) -> list[str]:
        """Activation tensors that shape inference could not give a rank to."""
        out = []
        for n in self.nodes:
            for o in n.output:
                if o and self.shape(o) is None:
                    out.append(o)
        return out

    def attr(self, index: int, name: str, default: object = None) -> object:
        for a in self.nodes[index].attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def tensors(self) -> Iterable[str]:
        yield from self.graph_inputs
        yield from self.initializers
        for n in self.nodes:
            yield from (o for o in n.output if o)
