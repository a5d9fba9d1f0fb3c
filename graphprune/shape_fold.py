"""Partial evaluation of shape arithmetic (Shape -> Gather/Slice/Concat/arith -> Reshape/Slice...).

PyTorch exports ``x.view(B, S, h, d)``, ``torch.chunk`` and ``flatten`` with shape values computed at
run time.  Where the dims they read are static, the values are known here; symbolic dims stay unknown
(mask False).  Rules read bounds through this; passes replace such computed inputs by constants.
"""

from __future__ import annotations

import numpy as np
import onnx

from graphprune.graph import GraphView

FOLD_OPS = frozenset({
    "Shape", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Add", "Sub", "Mul", "Div",
    "Floor", "Ceil", "Identity", "Constant", "Neg", "Reshape", "ReduceProd", "Max", "Min", "Mod",
    "Equal", "Where", "ConstantOfShape",
})
# (op_type, input index) slots that take a shape-like value, which the passes can rewrite to constants
SHAPE_SLOTS = frozenset({
    ("Reshape", 1), ("Slice", 1), ("Slice", 2), ("Slice", 3), ("Slice", 4), ("Split", 1), ("Expand", 1),
    ("Resize", 2), ("Resize", 3), ("Tile", 1), ("ConstantOfShape", 0), ("Unsqueeze", 1), ("Squeeze", 1),
})

Partial = tuple[np.ndarray, np.ndarray]  # (int64 values, bool known-mask)
# Unknown entries that are one dim of a tensor's shape carry that provenance in their value:
# -(1 + code), code indexing ShapeFolder.origins; anything else unknown holds NO_ORIGIN.
NO_ORIGIN = -(1 << 60)


class ShapeFolder:
    def __init__(self, view: GraphView) -> None:
        self.view = view
        self.cache: dict[str, Partial | None] = {}
        self.origins: list[tuple[str, int]] = []
        self._codes: dict[tuple[str, int], int] = {}

    def _code(self, tensor: str, axis: int) -> int:
        key = (tensor, axis)
        if key not in self._codes:
            self._codes[key] = len(self.origins)
            self.origins.append(key)
        return -(1 + self._codes[key])

    def origin(self, value: int) -> tuple[str, int] | None:
        """For an unknown entry: the (tensor, axis) whose run-time size it is, if it is one."""
        if NO_ORIGIN < value < 0 and -value - 1 < len(self.origins):
            return self.origins[-value - 1]
        return None

    def known(self, name: str) -> np.ndarray | None:
        """Fully known value of a small integer tensor (constant or folded), else None."""
        p = self.partial(name)
        if p is None or not p[1].all():
            return None
        return p[0]

    def partial(self, name: str) -> Partial | None:
        if not name:
            return None
        if name in self.cache:
            return self.cache[name]
        self.cache[name] = None  # cycle guard
        res = self._eval(name)
        self.cache[name] = res
        return res

    def _eval(self, name: str) -> Partial | None:
        v = self.view.small_constant(name)
        if v is not None:
            if v.dtype.kind not in "iuf" or v.size > 64:
                return None
            arr = np.asarray(v).astype(np.int64)
            return arr, np.ones(arr.shape, dtype=bool)
        i = self.view.producer.get(name)
        if i is None:
            return None
        node = self.view.nodes[i]
        op = node.op_type
        if op not in FOLD_OPS or node.domain not in ("", "ai.onnx"):
            return None
        if op == "Shape":
            shape = self.view.shape(node.input[0])
            if shape is None:
                return None
            r = len(shape)
            start = int(self.view.attr(i, "start", 0))  # type: ignore[call-overload]
            end = int(self.view.attr(i, "end", r))  # type: ignore[call-overload]
            start, end = (start + r if start < 0 else start), (end + r if end < 0 else end)
            axes = list(range(r))[slice(start, end)]
            dims = [shape[a] for a in axes]
            vals = np.array([d if isinstance(d, int) else self._code(node.input[0], a) for d, a in zip(dims, axes, strict=True)],
                            dtype=np.int64)
            return vals, np.array([isinstance(d, int) for d in dims], dtype=bool)
        ins = [self.partial(x) if x else None for x in node.input]
        if op in ("Cast", "Identity", "Floor", "Ceil"):
            return ins[0]
        if op == "Neg":
            return None if ins[0] is None else (np.where(ins[0][1], -ins[0][0], NO_ORIGIN), ins[0][1])
        if op == "Gather":
            if ins[0] is None or ins[1] is None or not ins[1][1].all() or ins[0][0].ndim != 1:
                return None
            idx = ins[1][0]
            return ins[0][0][idx], ins[0][1][idx]
        if op == "Concat":
            if any(p is None for p in ins):
                return None
            return (np.concatenate([np.atleast_1d(p[0]) for p in ins]),  # type: ignore[index]
                    np.concatenate([np.atleast_1d(p[1]) for p in ins]))  # type: ignore[index]
        if op in ("Unsqueeze", "Squeeze", "Reshape"):
            if ins[0] is None:
                return None
            out = self.view.shape(node.output[0])
            if out is None or not all(isinstance(d, int) for d in out):
                return None
            return ins[0][0].reshape(out), ins[0][1].reshape(out)  # type: ignore[arg-type]
        if op == "Slice":
            if ins[0] is None or any(p is None or not p[1].all() for p in ins[1:3]) or ins[0][0].ndim != 1:
                return None
            s, e = int(ins[1][0].ravel()[0]), int(ins[2][0].ravel()[0])  # type: ignore[index]
            step = int(ins[4][0].ravel()[0]) if len(ins) > 4 and ins[4] is not None else 1
            sl = slice(s, e, step)
            return ins[0][0][sl], ins[0][1][sl]
        if op == "ReduceProd":
            if ins[0] is None:
                return None
            known = bool(ins[0][1].all())
            return np.array(np.prod(ins[0][0]) if known else NO_ORIGIN), np.array(known)
        if op == "ConstantOfShape":  # PyTorch's expand(-1, ...) fills -1s this way
            if ins[0] is None or not ins[0][1].all() or int(np.prod(ins[0][0])) > 64:
                return None
            t = self.view.attr(i, "value", None)
            fill = int(np.asarray(onnx.numpy_helper.to_array(t)).ravel()[0]) if isinstance(t, onnx.TensorProto) else 0
            arr = np.full(tuple(int(d) for d in ins[0][0].ravel()), fill, dtype=np.int64)
            return arr, np.ones(arr.shape, dtype=bool)
        if op == "Equal":
            if ins[0] is None or ins[1] is None:
                return None
            return ((ins[0][0] == ins[1][0]).astype(np.int64),
                    np.asarray(np.logical_and(ins[0][1], ins[1][1])))
        if op == "Where":
            if any(p is None for p in ins[:3]):
                return None
            (c, ck), (x, xk), (y, yk) = ins[0], ins[1], ins[2]  # type: ignore[misc]
            val = np.where(c.astype(bool), x, y)
            return val, np.asarray(ck & np.where(c.astype(bool), xk, yk))
        if op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Mod"):
            if ins[0] is None or ins[1] is None:
                return None
            a, b = ins[0][0], ins[1][0]
            with np.errstate(all="ignore"):
                val = {
                    "Add": lambda: a + b, "Sub": lambda: a - b, "Mul": lambda: a * b,
                    "Div": lambda: np.floor_divide(a, np.where(b == 0, 1, b)),
                    "Max": lambda: np.maximum(a, b), "Min": lambda: np.minimum(a, b),
                    "Mod": lambda: np.mod(a, np.where(b == 0, 1, b)),
                }[op]()
            both = np.asarray(np.logical_and(ins[0][1], ins[1][1]))
            return np.where(both, np.asarray(val, dtype=np.int64), NO_ORIGIN), both
        return None

    def shape_uses_ok(self, name: str, seen: set[str] | None = None) -> bool:
        """True if every use of ``name`` (through shape arithmetic) ends in a rewritable shape slot."""
        seen = set() if seen is None else seen
        if name in seen:
            return True
        seen.add(name)
        if self.view.is_graph_output(name):
            return False
        for ci in self.view.consumers.get(name, []):
            node = self.view.nodes[ci]
            for k, inp in enumerate(node.input):
                if inp != name:
                    continue
                if (node.op_type, k) in SHAPE_SLOTS and (k > 0 or node.op_type == "ConstantOfShape"):
                    if node.op_type != "Reshape" and self.known(inp) is None:
                        return False
                    continue
                if node.op_type in FOLD_OPS and node.op_type != "Shape":
                    if not all(self.shape_uses_ok(o, seen) for o in node.output if o):
                        return False
                    continue
                return False
        return True


def fold_static_shape_inputs(model: onnx.ModelProto) -> int:
    """Replace computed shape inputs whose value is fully known by constants (in place).

    Returns how many inputs were replaced.  Sound because the values depend only on static dims.
    """
    from onnx import numpy_helper

    view = GraphView(model)
    folder = ShapeFolder(view)
    names = {t.name for t in model.graph.initializer} | set(view.producer)
    replaced = 0
    for node in model.graph.node:
        for k, inp in enumerate(node.input):
            if not inp or (node.op_type, k) not in SHAPE_SLOTS or view.is_constant(inp):
                continue
            if k == 0 and node.op_type != "ConstantOfShape":
                continue
            val = folder.known(inp)
            if val is None and node.op_type == "Reshape":
                val = _copy_dims_target(folder, node, inp)
            if val is None:
                continue
            new = f"{inp}_folded"
            while new in names:
                new += "_"
            names.add(new)
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(val, dtype=np.int64), new))
            node.input[k] = new
            replaced += 1
    return replaced


def _copy_dims_target(folder: ShapeFolder, node: onnx.NodeProto, target: str) -> np.ndarray | None:
    """A Reshape target whose unknown entries are the input's own dims at the same positions
    (``x.view(x.size(0), x.size(1), h, d)``) is the constant target with 0 ("copy") there.  An entry
    read from another tensor counts when inference gave both dims the same symbol (equal at run time)."""
    if any(a.name == "allowzero" and a.i for a in node.attribute):
        return None
    part = folder.partial(target)
    if part is None:
        return None
    vals, known = np.ravel(part[0]).copy(), np.ravel(part[1])
    for k in np.flatnonzero(~known):
        origin = folder.origin(int(vals[k]))
        if origin is None:
            return None
        here = folder.view.dim(node.input[0], int(k))
        there = folder.view.dim(*origin)
        if origin != (node.input[0], int(k)) and not (isinstance(here, str) and here == there):
            return None
        vals[k] = 0
    return vals
