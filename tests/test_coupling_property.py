"""Property: with unit c cut out of every consumer (as pruning assumes), perturbing c at a group's producer changes, in every activation the group claims,
exactly that unit's channels and no other (catches missed couplings), and every claimed activation
does change there for some producer (catches invented couplings).  Checked in ONNX Runtime with the
claimed tensors exposed as outputs.  Models with squeeze-excitation are excluded: there a channel
legitimately reaches every other channel through the excitation (information flow, not coupling)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from graphprune.analysis import analyze
from graphprune.rules import Space
from graphprune.verify import masked_reference
from models.zoo import ZOO, random_inputs

MODELS = ["small_cnn", "resnet18_bn", "resnet50", "resnext", "mobilenetv2_bn", "densenet", "unet", "yolo_c2f",
          "bert", "vit"]


def _run(model: onnx.ModelProto, feeds, outputs):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for t in outputs:
        if t not in existing:
            m.graph.output.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip(outputs, sess.run(outputs, feeds), strict=True))


def _perturbed(model, tensor, axis, rank, idx, delta):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    raw = tensor + "__raw"
    for n in m.graph.node:
        for k, o in enumerate(n.output):
            if o == tensor:
                n.output[k] = raw
    shape = [1] * rank
    size = int(max(idx)) + 1
    shape[axis] = size
    d = np.zeros(shape, np.float32)
    sl = [0] * rank
    for i in idx:
        sl[axis] = int(i)
        d[tuple(sl)] = delta
    # pad the delta to the full axis with a Pad-free trick: a constant of the exact axis size
    m.graph.initializer.append(numpy_helper.from_array(d, tensor + "__delta"))
    m.graph.node.append(helper.make_node("Add", [raw, tensor + "__delta"], [tensor]))
    onnx_sorted = _toposort(m)
    return onnx_sorted


def _toposort(m):
    from graphprune.model_io import _toposort

    _toposort(m)
    return m


@pytest.mark.parametrize("name", MODELS)
def test_perturbing_a_unit_changes_exactly_its_channels(name):
    a = analyze(str(ZOO[name].path))
    model = a.model
    view = a.view
    feeds = random_inputs(name, batch=2, seed=3)
    rng = np.random.default_rng(0)
    checked = 0
    for g in a.prunable:
        acts = [s for s in g.spaces if not s.virtual and not view.is_constant(s.tensor)]
        producers = [s for s in acts if s.tensor in view.producer
                     and view.nodes[view.producer[s.tensor]].op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add")
                     and any(p.role == "out" and p.node == view.producer[s.tensor] for p in g.params)]
        if not producers or not acts:
            continue
        c = int(rng.integers(g.n_units))
        names = sorted({s.tensor for s in acts})
        # cut unit c out of every consumer, so it can only travel along couplings
        zero = {}
        for p in g.params:
            if p.role == "in":
                zero.setdefault(p.space.tensor, {})[p.space.axis] = g.indices[p.space][c]
        masked = masked_reference(model, zero)
        base = _run(masked, feeds, names)
        changed: set[Space] = set()
        base_prod = _run(masked, feeds, sorted({p.tensor for p in producers}))
        for prod in producers:
            rank = view.rank(prod.tensor)
            size = view.static_dim(prod.tensor, prod.axis)
            idx = g.indices[prod][c]
            big = 10.0 + 4.0 * float(np.abs(base_prod[prod.tensor]).max())
            for delta in (big, -big):  # large enough to pass any ReLU, whatever the activation scale
                pm = _perturbed(masked, prod.tensor, prod.axis, rank, idx, delta)
                # make the delta span the whole axis so broadcasting is exact
                for t in pm.graph.initializer:
                    if t.name == prod.tensor + "__delta":
                        arr = numpy_helper.to_array(t)
                        full = np.zeros([size if k == prod.axis else 1 for k in range(rank)], np.float32)
                        full[tuple(slice(0, s) for s in arr.shape)] = arr
                        t.CopyFrom(numpy_helper.from_array(full, t.name))
                out = _run(pm, feeds, names)
                for s in acts:
                    diff = np.abs(out[s.tensor].astype(np.float64) - base[s.tensor])
                    per_ch = np.moveaxis(diff, s.axis, 0).reshape(diff.shape[s.axis], -1).max(axis=1)
                    mine = g.indices[s][c]
                    others = np.setdiff1d(np.arange(len(per_ch)), mine)
                    scale = 1e-4 * (np.abs(base[s.tensor]).max() + 1.0)
                    assert per_ch[others].max(initial=0.0) <= scale, (
                        f"group {g.id}: perturbing unit {c} at {prod} changed other channels of {s}")
                    if per_ch[mine].max() > scale:
                        changed.add(s)
        missing = [s for s in acts if s not in changed]
        assert not missing, f"group {g.id}: claimed but never changed: {missing[:3]}"
        checked += 1
    assert checked >= 1
