"""External-data cases: valid, missing, truncated, and locations that escape the model folder (``..``,
absolute paths, symlinked files and folders, a FIFO, and the less obvious holders of tensors: Constant
attributes, subgraph initializers, sparse initializers, model-local functions).

The escaping cases put a *valid* data file outside the model folder, so that only the location check
can stop graphprune (or ONNX Runtime) from reading it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.corpus.models import OPSET, OUT4, Builder, base_model, image_input, prunable_trunk, save


def with_external(d: Path, location: str = "weights.bin", model: onnx.ModelProto | None = None) -> Path:
    """Save ``model`` (default :func:`base_model`) with all initializers in ``d / location``."""
    m = model or base_model()
    onnx.save_model(m, str(d / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return d / "model.onnx"


def set_locations(model_path: Path, location: str) -> None:
    m = onnx.load(str(model_path), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    model_path.write_bytes(m.SerializeToString())


def external_ok(d: Path) -> Path:
    (d / "data").mkdir()
    return with_external(d, "data/weights.bin")


def external_missing(d: Path) -> Path:
    p = with_external(d)
    (d / "weights.bin").unlink()
    return p


def external_truncated(d: Path) -> Path:
    p = with_external(d)
    data = (d / "weights.bin").read_bytes()
    (d / "weights.bin").write_bytes(data[: len(data) // 2])
    return p


def outside(d: Path) -> Path:
    """A folder beside the model's folder (both inside the case folder)."""
    out = d / "outside"
    out.mkdir(exist_ok=True)
    return out


def escape_dotdot(d: Path) -> Path:
    """Location '../outside/weights.bin': a readable, valid data file outside the model folder."""
    model_dir = d / "model"
    model_dir.mkdir()
    p = with_external(model_dir)
    os.replace(model_dir / "weights.bin", outside(d) / "weights.bin")
    set_locations(p, "../outside/weights.bin")
    return p


def escape_absolute(d: Path) -> Path:
    p = with_external(d)
    target = outside(d) / "weights.bin"
    os.replace(d / "weights.bin", target)
    set_locations(p, str(target.resolve()))
    return p


def escape_symlink(d: Path) -> Path:
    """The data file inside the folder is a symlink to a valid data file outside it."""
    model_dir = d / "model"
    model_dir.mkdir()
    p = with_external(model_dir)
    target = outside(d) / "weights.bin"
    os.replace(model_dir / "weights.bin", target)
    (model_dir / "weights.bin").symlink_to(target)
    return p


def escape_symlinked_dir(d: Path) -> Path:
    """'sub/weights.bin' where 'sub' is a symlink to a folder outside."""
    model_dir = d / "model"
    model_dir.mkdir()
    p = with_external(model_dir)
    out = outside(d)
    os.replace(model_dir / "weights.bin", out / "weights.bin")
    (model_dir / "sub").symlink_to(out, target_is_directory=True)
    set_locations(p, "sub/weights.bin")
    return p


def escape_fifo(d: Path) -> Path:
    """'../outside/weights.bin' is a FIFO: opening it for reading blocks forever (nobody writes)."""
    model_dir = d / "model"
    model_dir.mkdir()
    p = with_external(model_dir)
    (model_dir / "weights.bin").unlink()
    os.mkfifo(outside(d) / "weights.bin")
    set_locations(p, "../outside/weights.bin")
    return p


def _move_outside(t: TensorProto, d: Path, name: str) -> None:
    """Store ``t``'s bytes in ``outside(d)/name`` and point it there as ``../outside/name``."""
    (outside(d) / name).write_bytes(t.raw_data)
    onnx.external_data_helper.set_external_data(t, f"../outside/{name}")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL


def escape_in_constant(d: Path) -> Path:
    """External data in a Constant node's tensor (not an initializer) pointing outside."""
    b = Builder()
    w = numpy_helper.from_array((b.rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "cw")
    b.nodes.append(helper.make_node("Constant", [], ["cw"], name="const", value=w))
    y = b.op("Relu", b.op("Conv", "x", "cw", pads=[1, 1, 1, 1]))
    m = b.model([image_input()], {b.conv(y, 8, 4, 1): OUT4})
    model_dir = d / "model"
    model_dir.mkdir()
    t = m.graph.node[0].attribute[0].t
    _move_outside(t, d, "cw.bin")
    return save(m, model_dir)


def escape_in_subgraph(d: Path) -> Path:
    """External data in an If branch's initializer, pointing outside."""
    b = Builder()
    t = prunable_trunk(b)
    bias = numpy_helper.from_array(np.ones((1, 4, 1, 1), np.float32), "branch_bias")
    then_g = helper.make_graph([helper.make_node("Add", [t, "branch_bias"], ["then_y"])], "then", [],
                               [helper.make_tensor_value_info("then_y", TensorProto.FLOAT, OUT4)], [bias])
    else_g = helper.make_graph([helper.make_node("Neg", [t], ["else_y"])], "else", [],
                               [helper.make_tensor_value_info("else_y", TensorProto.FLOAT, OUT4)])
    b.nodes.append(helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_g, else_branch=else_g))
    m = b.model([image_input(), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])], {"y": OUT4})
    model_dir = d / "model"
    model_dir.mkdir()
    [then_attr] = [a for a in m.graph.node[-1].attribute if a.name == "then_branch"]
    bt = then_attr.g.initializer[0]
    _move_outside(bt, d, "bias.bin")
    return save(m, model_dir)


def escape_sparse(d: Path) -> Path:
    """A sparse initializer whose values live in external data outside the folder (unused by nodes)."""
    m = base_model()
    values = numpy_helper.from_array(np.ones(2, np.float32), "sparse_w")
    indices = numpy_helper.from_array(np.array([0, 3], np.int64), "sparse_w_idx")
    model_dir = d / "model"
    model_dir.mkdir()
    _move_outside(values, d, "sparse.bin")
    m.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4]))
    return save(m, model_dir)


def escape_in_function(d: Path) -> Path:
    """A model-local function whose Constant reads external data outside the folder."""
    b = Builder()
    t = prunable_trunk(b)
    c = numpy_helper.from_array(np.ones((1, 4, 1, 1), np.float32), "fc")
    model_dir = d / "model"
    model_dir.mkdir()
    _move_outside(c, d, "fc.bin")
    fn = helper.make_function(
        "local.fn", "AddOne", ["a"], ["z"],
        [helper.make_node("Constant", [], ["one"], value=c), helper.make_node("Add", ["a", "one"], ["z"])],
        [helper.make_opsetid("", OPSET)],
    )
    b.nodes.append(helper.make_node("AddOne", [t], ["y"], name="fn_call", domain="local.fn"))
    m = b.model([image_input()], {"y": OUT4}, extra_opsets={"local.fn": 1})
    m.functions.append(fn)
    return save(m, model_dir)
