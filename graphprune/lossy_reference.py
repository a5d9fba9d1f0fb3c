"""An exact reference for lossy cuts (the hidden size of a transformer, across LayerNorm/RMSNorm).

Cutting channels that a normalisation or a mean runs over changes what is computed: the pruned model
normalises over the kept channels only.  Zeroing columns cannot express that, so lossy cuts used to be
compared with an approximate reference.  This module builds one that means exactly "the same model,
with the statistics taken over the kept channels":

* the lossy groups' producers are zeroed as well as their consumers, so the removed channels are
  exactly zero wherever they flow;
* a ``ReduceMean`` over a cut axis is multiplied by ``size / kept`` (the zeros added nothing to the sum);
  ``ReduceSum``/``ReduceSumSquare``/``ReduceL1``/``ReduceL2`` need nothing;
* a ``LayerNormalization``/``RMSNormalization`` over a cut last axis runs on the kept channels
  (Gather), and its result is put back at full width with zeros in the removed channels.

That holds only if nothing else turns the zeros into something else: every node that reads a cut
axis of a lossy group is checked (element-wise ops that keep zeros, layout ops, weighted consumers,
the reductions above).  Anything else — a Sub of a broadcast mean (a decomposed LayerNorm), a
Softmax, a Sigmoid — is named as the reason, and the proof stays approximate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphprune.analysis import Analysis
from graphprune.graph import GraphView
from graphprune.rules import Space

ZERO_SUMS = {"ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2"}
NORMS = {"LayerNormalization", "RMSNormalization"}
KEEPS_ZERO = {  # f(0) = 0 element-wise, or moves values without creating any
    "Relu", "LeakyRelu", "PRelu", "Gelu", "Erf", "Tanh", "Neg", "Abs", "Sqrt", "Identity", "Cast", "Dropout",
    "Sin", "Sign", "Elu", "Selu", "Softsign", "Mul", "Transpose", "Reshape", "Flatten", "Squeeze",
    "Unsqueeze", "Concat", "Split", "Slice", "Gather", "Expand", "Tile", "MatMul", "Gemm", "Conv",
    "ConvTranspose", "Einsum",
    "Shape",  # reads sizes only; the analysis freezes a cut axis whose size feeds shape arithmetic
}


@dataclass
class LossyRewrite:
    """What the exact reference changes; ``blocker`` says why there is none."""

    rescale: dict[int, float] = field(default_factory=dict)  # ReduceMean node -> size/kept
    recompute: dict[int, np.ndarray] = field(default_factory=dict)  # norm node -> kept channels (last axis)
    blocker: str | None = None


def _reduced_axes(view: GraphView, i: int, rank: int) -> set[int] | None:
    node = view.nodes[i]
    attr = view.attr(i, "axes", None)
    axes = [int(a) for a in attr] if isinstance(attr, list | tuple) else None
    if axes is None and len(node.input) > 1 and node.input[1]:
        v = view.constant_value(node.input[1])
        if v is None:
            return None
        axes = [int(a) for a in np.asarray(v).ravel()]
    if not axes:
        return set(range(rank)) if not view.attr(i, "noop_with_empty_axes", 0) else set()
    return {a + rank if a < 0 else a for a in axes}


def plan_rewrite(analysis: Analysis, keep: dict[Space, np.ndarray], sizes: dict[Space, int],
                 lossy_groups: set[int]) -> LossyRewrite:
    """Check every node reading a cut axis of a pruned lossy group and collect the rewrites."""
    view = analysis.view
    cut: dict[Space, np.ndarray] = {}
    for g in analysis.groups:
        if g.id in lossy_groups:
            cut.update((s, keep[s]) for s in g.spaces if s in keep and not s.virtual and len(keep[s]) < sizes[s])
    out = LossyRewrite()
    by_tensor: dict[str, list[Space]] = {}
    for s in cut:
        by_tensor.setdefault(s.tensor, []).append(s)
    for t, spaces in by_tensor.items():
        if view.is_constant(t):
            continue  # weights: sliced, zeroed in the reference as producers/consumers
        for ci in view.consumers.get(t, []):
            for s in spaces:
                why = _check(view, ci, s, cut, out)
                if why is not None:
                    out.blocker = why
                    return out
    return out


def _check(view: GraphView, i: int, s: Space, cut: dict[Space, np.ndarray], out: LossyRewrite) -> str | None:
    node = view.nodes[i]
    op, name = node.op_type, view.node_names[i]
    rank = view.rank(s.tensor) or 0
    if op in ZERO_SUMS or op == "ReduceMean":
        axes = _reduced_axes(view, i, rank)
        if axes is None:
            return f"{op} '{name}' has dynamic axes"
        if op == "ReduceMean" and s.axis in axes:
            out.rescale[i] = out.rescale.get(i, 1.0) * view.static_dim(s.tensor, s.axis) / len(cut[s])  # type: ignore[operator]
        return None
    if op in NORMS:
        if node.input[0] != s.tensor:
            return None  # the scale/bias: a weight
        axis = int(view.attr(i, "axis", -1))  # type: ignore[call-overload]
        axis = axis + rank if axis < 0 else axis
        if s.axis < axis:
            return None  # not normalised over
        if axis != rank - 1 or any(o for o in node.output[1:]):
            return f"{op} '{name}' normalises over more than the cut last axis"
        out.recompute[i] = cut[s]
        return None
    if op in ("Add", "Sub", "Sum"):
        for other in node.input:
            if other == s.tensor or not other:
                continue
            r = view.rank(other) or 0
            a = s.axis - (rank - r)
            if a < 0 or view.static_dim(other, a) != view.static_dim(s.tensor, s.axis):
                return f"{op} '{name}' adds a value broadcast over the cut axis (removed channels would not stay zero)"
        return None
    if op == "Div":
        return None if node.input[0] == s.tensor else f"Div '{name}' divides by the cut channels"
    if op == "Pow":
        e = view.constant_value(node.input[1]) if len(node.input) > 1 else None
        ok = node.input[0] == s.tensor and e is not None and np.all(np.asarray(e) > 0)
        return None if ok else f"Pow '{name}' does not keep zeros"
    if op in KEEPS_ZERO:
        return None
    return f"{op} '{name}' reads the cut axis and does not keep zeros"


def apply_rewrite(model: onnx.ModelProto, view: GraphView, rw: LossyRewrite) -> onnx.ModelProto:
    """``model`` (the masked reference, same node order as ``view``) with the rewrites in place."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    for i, node in enumerate(model.graph.node):
        tag = f"__exact{i}_"
        if i in rw.rescale:
            y = node.output[0]
            n = onnx.NodeProto()
            n.CopyFrom(node)
            n.output[0] = tag + "mean"
            dtype = helper.tensor_dtype_to_np_dtype(view.dtypes.get(y, onnx.TensorProto.FLOAT))
            inits.append(numpy_helper.from_array(np.array(rw.rescale[i], dtype), tag + "factor"))
            nodes += [n, helper.make_node("Mul", [tag + "mean", tag + "factor"], [y], name=tag + "rescale")]
        elif i in rw.recompute:
            nodes += _recomputed_norm(node, view, rw.recompute[i], tag, inits)
        else:
            nodes.append(node)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(inits)
    return out


def _recomputed_norm(node: onnx.NodeProto, view: GraphView, kept: np.ndarray, tag: str,
                     inits: list[onnx.TensorProto]) -> list[onnx.NodeProto]:
    """The norm on the kept channels of its last axis, scattered back to full width with zeros."""
    x, y = node.input[0], node.output[0]
    rank = view.rank(x) or 1
    size = int(view.static_dim(x, rank - 1))  # type: ignore[arg-type]
    inv = np.full(size, len(kept), np.int64)
    inv[kept] = np.arange(len(kept))
    dtype = helper.tensor_dtype_to_np_dtype(view.dtypes.get(y, onnx.TensorProto.FLOAT))
    for name, value in (("idx", np.asarray(kept, np.int64)), ("inv", inv), ("zero", np.array(0, dtype)),
                        ("s0", np.array([0], np.int64)), ("s1", np.array([1], np.int64)),
                        ("ax", np.array([rank - 1], np.int64))):
        inits.append(numpy_helper.from_array(value, tag + name))
    out = [helper.make_node("Gather", [x, tag + "idx"], [tag + "x"], axis=rank - 1)]
    ins = [tag + "x"]
    for k, p in enumerate(node.input[1:3], start=1):
        if not p:
            ins.append("")
            continue
        pr = view.rank(p) or 1
        out.append(helper.make_node("Gather", [p, tag + "idx"], [f"{tag}p{k}"], axis=pr - 1))
        ins.append(f"{tag}p{k}")
    norm = onnx.NodeProto()
    norm.CopyFrom(node)
    del norm.input[:]
    norm.input.extend(ins)
    del norm.output[:]
    norm.output.append(tag + "y")
    out += [
        norm,
        helper.make_node("Slice", [tag + "y", tag + "s0", tag + "s1", tag + "ax"], [tag + "col"]),
        helper.make_node("Mul", [tag + "col", tag + "zero"], [tag + "zeros"]),
        helper.make_node("Concat", [tag + "y", tag + "zeros"], [tag + "cat"], axis=rank - 1),
        helper.make_node("Gather", [tag + "cat", tag + "inv"], [y], axis=rank - 1),
    ]
    return out
