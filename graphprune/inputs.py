"""Model inputs: random ones from the input spec, or loaded from an .npz file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from graphprune.errors import UnsupportedModelError, UsageError
from graphprune.graph import GraphView

DEFAULT_DIMS = {"batch": 2, "other": 8}


def input_specs(view: GraphView) -> dict[str, tuple[tuple[int | str | None, ...] | None, np.dtype]]:
    out = {}
    for vi in view.graph.input:
        if vi.name in view.initializers:
            continue
        shape = view.shape(vi.name)  # None: unknown rank (not a scalar)
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
        except (KeyError, TypeError, ValueError):
            raise UnsupportedModelError(f"input '{vi.name}' is not a tensor of a numeric type graphprune can feed "
                             f"({onnx.helper.printable_type(vi.type) or 'no type'})") from None
        out[vi.name] = (shape, dtype)
    return out


def _index_range(view: GraphView, name: str) -> int | None:
    """If an integer input indexes a table (Gather), the table size bounds its values."""
    for ci in view.consumers.get(name, []):
        node = view.nodes[ci]
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name:
            axis = int(view.attr(ci, "axis", 0))  # type: ignore[call-overload]
            d = view.static_dim(node.input[0], axis)
            if d:
                return d
    return None


def random_inputs(
    model: onnx.ModelProto | GraphView,
    *,
    batch: int = 2,
    seq: int = 8,
    seed: int = 0,
    dims: dict[str, int] | None = None,
) -> dict[str, np.ndarray]:
    view = model if isinstance(model, GraphView) else GraphView(model)
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, (shape, dtype) in input_specs(view).items():
        if shape is None:
            raise UnsupportedModelError(f"input '{name}' has no shape (unknown rank), so random values cannot be made "
                             "for it; pass --inputs with an .npz holding it")
        concrete = []
        for k, d in enumerate(shape):
            if isinstance(d, int) and d > 0:
                concrete.append(d)
            elif dims and isinstance(d, str) and d in dims:
                concrete.append(dims[d])
            else:
                concrete.append(batch if k == 0 else seq)
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(concrete).astype(dtype)
        elif np.issubdtype(dtype, np.integer):
            hi = _index_range(view, name) or 2
            feeds[name] = rng.integers(0, hi, size=concrete).astype(dtype)
        elif dtype == np.bool_:
            feeds[name] = rng.integers(0, 2, size=concrete).astype(np.bool_)
        else:
            raise UsageError(f"cannot make random values for input '{name}' of type {dtype}; pass --inputs")
    return feeds


def load_inputs(path: str | os.PathLike[str], view: GraphView) -> dict[str, np.ndarray]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"inputs file {p} does not exist")
    try:
        with np.load(p, allow_pickle=False) as data:
            feeds = {k: data[k] for k in data.files}
    except Exception as e:
        raise UsageError(f"inputs file {p} is not a readable .npz ({e})") from e
    specs = input_specs(view)
    missing = sorted(set(specs) - set(feeds))
    if missing:
        raise UsageError(f"inputs file {p} lacks model inputs: {', '.join(missing)}")
    return {k: feeds[k].astype(specs[k][1], copy=False) for k in specs}
