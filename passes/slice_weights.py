"""Slice every pruned constant (initializers and ``Constant`` node values) along its pruned axes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from graphprune.passes.base import PassResult, PruneContext
from graphprune.tensors import is_external, read


def _sliced(arr: np.ndarray, axes: dict[int, np.ndarray]) -> np.ndarray:
    for axis, kept in sorted(axes.items()):
        arr = np.take(arr, kept, axis=axis)
    return arr


class SliceWeights:
    name = "slice-weights"

    def __call__(self, ctx: PruneContext) -> PassResult:
        by_tensor: dict[str, dict[int, np.ndarray]] = {}
        for space, kept in ctx.keep.items():
            if not space.virtual and ctx.view.is_constant(space.tensor):
                by_tensor.setdefault(space.tensor, {})[space.axis] = kept
        details = []
        g = ctx.model.graph
        for t in g.initializer:
            axes = by_tensor.pop(t.name, None)
            if axes is None:
                continue
            arr = read(t)
            new = np.ascontiguousarray(_sliced(arr, axes))
            if is_external(t) and ctx.scratch is not None:
                t.CopyFrom(ctx.scratch.put(t.name, new))
            else:
                t.CopyFrom(numpy_helper.from_array(new, t.name))
            details.append(f"{t.name}: {list(arr.shape)} -> {list(new.shape)}")
        for node in g.node:
            if node.op_type != "Constant" or not node.output or node.output[0] not in by_tensor:
                continue
            axes = by_tensor.pop(node.output[0])
            for attr in node.attribute:
                if attr.name == "value":
                    arr = numpy_helper.to_array(attr.t)
                    new = _sliced(arr, axes)
                    attr.t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(new), attr.t.name))
                    details.append(f"{node.output[0]} (Constant): {list(arr.shape)} -> {list(new.shape)}")
        if by_tensor:
            missing = ", ".join(sorted(by_tensor)[:3])
            raise ValueError(f"constants not found in the model: {missing}")
        return PassResult(self.name, bool(details), details)


def new_constant_name(model: onnx.ModelProto, base: str) -> str:
    names = {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
    k = 0
    while f"{base}_gp{k}" in names:
        k += 1
    return f"{base}_gp{k}"
