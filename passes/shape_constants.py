"""Rewrite constants that spell out channel counts: Reshape targets, Split sizes, Slice bounds,
Expand shapes and Resize sizes.  Each rewritten value gets a fresh initializer so constants shared
with untouched nodes stay as they were."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from graphprune.passes.base import PassResult, PruneContext
from graphprune.passes.slice_weights import new_constant_name


def _replace_input(ctx: PruneContext, node: onnx.NodeProto, k: int, value: np.ndarray) -> None:
    name = new_constant_name(ctx.model, node.input[k] or "shape")
    ctx.model.graph.initializer.append(numpy_helper.from_array(value, name))
    node.input[k] = name


def _reshape(ctx: PruneContext, i: int, node: onnx.NodeProto) -> str | None:
    y = node.output[0]
    target = ctx.view.small_constant(node.input[1])
    pruned = ctx.pruned_axes(y)
    if not pruned:
        return None
    if target is None:
        new_shape = _constant_target(ctx, i, node.input[0], y)
        _replace_input(ctx, node, 1, new_shape)
        return f"Reshape '{ctx.view.node_names[i]}': computed shape -> constant {new_shape.tolist()}"
    new = np.array(target, dtype=np.int64).copy()
    for axis, kept in pruned.items():
        if new[axis] not in (-1, 0):
            new[axis] = len(kept)
    if np.array_equal(new, target):
        return None
    _replace_input(ctx, node, 1, new)
    return f"Reshape '{ctx.view.node_names[i]}': shape {target.tolist()} -> {new.tolist()}"


def _constant_target(ctx: PruneContext, i: int, x: str, y: str) -> np.ndarray:
    """A constant Reshape target for the pruned model: static dims spelled out, symbolic dims copied
    from the input (0) where they sit at the same position, at most one inferred (-1)."""
    out_shape, in_shape = ctx.view.shape(y), ctx.view.shape(x) or ()
    name = ctx.view.node_names[i]
    if out_shape is None or ctx.view.attr(i, "allowzero", 0):
        raise ValueError(f"Reshape '{name}' has a computed shape that cannot be made constant")
    pruned = ctx.pruned_axes(y)
    new = []
    for a, d in enumerate(out_shape):
        if a in pruned:
            new.append(len(pruned[a]))
        elif isinstance(d, int):
            new.append(d)
        elif a < len(in_shape) and in_shape[a] == d and d is not None:
            new.append(0)
        else:
            new.append(-1)
    if new.count(-1) > 1:
        raise ValueError(f"Reshape '{name}' has a computed shape with several unknown dims")
    return np.array(new, dtype=np.int64)


def _split(ctx: PruneContext, i: int, node: onnx.NodeProto) -> str | None:
    x = node.input[0]
    axis = int(ctx.view.attr(i, "axis", 0))
    r = ctx.view.rank(x) or 0
    axis = axis + r if axis < 0 else axis
    if ctx.kept(x, axis) is None:
        return None
    sizes = [ctx.new_dim(o, axis) for o in node.output]
    old = [ctx.view.static_dim(o, axis) for o in node.output]
    if sizes == old:
        return None
    arr = np.array(sizes, dtype=np.int64)
    for a in node.attribute:
        if a.name == "split":
            del a.ints[:]
            a.ints.extend(int(s) for s in sizes)
            break
        if a.name == "num_outputs":
            node.attribute.remove(a)
            node.input.append("")
            _replace_input(ctx, node, 1, arr)
            break
    else:
        if len(node.input) > 1 and node.input[1]:
            _replace_input(ctx, node, 1, arr)
        elif ctx.view.opset_for("") >= 13:
            if len(node.input) < 2:
                node.input.append("")
            _replace_input(ctx, node, 1, arr)
        else:
            node.attribute.append(onnx.helper.make_attribute("split", [int(s) for s in sizes]))
    return f"Split '{ctx.view.node_names[i]}': sizes {old} -> {sizes}"


def _slice(ctx: PruneContext, i: int, node: onnx.NodeProto) -> str | None:
    x = node.input[0]
    pruned = ctx.pruned_axes(x)
    if not pruned:
        return None
    r = ctx.view.rank(x) or 0
    s_val, e_val = ctx.view.known_value(node.input[1]), ctx.view.known_value(node.input[2])
    if len(node.input) > 3 and node.input[3]:
        axes_val = ctx.view.known_value(node.input[3])
        if axes_val is None:
            raise ValueError(f"Slice '{ctx.view.node_names[i]}' has computed axes and a pruned input")
        axes = np.array(axes_val).ravel()
    else:
        axes = np.arange(r)[: len(np.ravel(s_val))] if s_val is not None else np.arange(r)
    if not any((int(a) + r if a < 0 else int(a)) in pruned for a in axes):
        return None  # the pruned axes are not sliced: bounds stay valid
    if s_val is None or e_val is None:
        raise ValueError(f"Slice '{ctx.view.node_names[i]}' has computed bounds on a pruned axis")
    starts = np.array(s_val, dtype=np.int64).ravel().copy()
    ends = np.array(e_val, dtype=np.int64).ravel().copy()
    changed = False
    for k, a in enumerate(axes):
        a = int(a) + r if a < 0 else int(a)
        kept = pruned.get(a)
        if kept is None:
            continue
        n = int(ctx.view.static_dim(x, a))
        s, e, _ = slice(int(starts[k]), int(ends[k])).indices(n)
        new_s = int(np.searchsorted(kept, s))
        new_e = int(np.searchsorted(kept, e)) if int(ends[k]) < n else int(ends[k])
        if (new_s, new_e) != (int(starts[k]), int(ends[k])):
            starts[k], ends[k] = new_s, new_e
            changed = True
    if not changed:
        return None
    _replace_input(ctx, node, 1, starts)
    _replace_input(ctx, node, 2, ends)
    return f"Slice '{ctx.view.node_names[i]}': starts/ends -> {starts.tolist()}/{ends.tolist()}"


def _expand_like(ctx: PruneContext, i: int, node: onnx.NodeProto, k: int) -> str | None:
    """Expand shape (input 1) or Resize sizes (input 3): entries of pruned output axes."""
    y = node.output[0]
    pruned = ctx.pruned_axes(y)
    if not pruned or len(node.input) <= k or not node.input[k]:
        return None
    val = ctx.view.small_constant(node.input[k])
    if val is None:
        part = ctx.view.folder.partial(node.input[k])
        if part is not None and part[0].ndim == 1:
            shift = (ctx.view.rank(y) or part[0].size) - part[0].size
            entries = [axis - shift for axis in pruned]
            if all(0 <= e < part[0].size and part[1][e] and part[0][e] == 1 for e in entries):
                return None  # broadcast (1) on every pruned axis: the input's size carries through
        raise ValueError(f"{node.op_type} '{ctx.view.node_names[i]}' has a computed shape and a pruned axis")
    new = np.array(val, dtype=np.int64).ravel().copy()
    ry = ctx.view.rank(y) or len(new)
    shift = ry - len(new)
    for axis, kept in pruned.items():
        j = axis - shift
        if 0 <= j < len(new) and new[j] != 1:
            new[j] = len(kept)
    if np.array_equal(new, np.ravel(val)):
        return None
    _replace_input(ctx, node, k, new)
    return f"{node.op_type} '{ctx.view.node_names[i]}': {np.ravel(val).tolist()} -> {new.tolist()}"


class RewriteShapeConstants:
    name = "rewrite-shape-constants"

    def __call__(self, ctx: PruneContext) -> PassResult:
        details = []
        for i, node in enumerate(ctx.model.graph.node):
            if node.domain not in ("", "ai.onnx"):
                continue
            msg = None
            if node.op_type == "Reshape":
                msg = _reshape(ctx, i, node)
            elif node.op_type == "Split":
                msg = _split(ctx, i, node)
            elif node.op_type == "Slice":
                msg = _slice(ctx, i, node)
            elif node.op_type == "Expand":
                msg = _expand_like(ctx, i, node, 1)
            elif node.op_type == "Resize":
                msg = _expand_like(ctx, i, node, 3)
            if msg:
                details.append(msg)
        return PassResult(self.name, bool(details), details)
