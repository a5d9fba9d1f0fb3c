"""Layer shapes of a model, and single-op ONNX models of them at any channel count.

A :class:`LayerSig` is what a latency table is keyed by: op, kernel, stride, padding, spatial size,
batch and the dense channel counts of a Conv (plain, grouped or depthwise), Gemm or MatMul with a
constant 2-D weight.  :func:`model_layers` finds them in a model (shapes made concrete from
``--shapes`` or the profiler's defaults), :func:`layer_model` builds the probe that
``calibrate-latency`` times, and :func:`axis_grid` / :func:`sig_grid` choose the channel counts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphprune.graph import GraphView
from graphprune.rules import Space

log = logging.getLogger(__name__)

INPUT = "gp_latency_x"  # unlikely to collide with a --shapes name
_OPSET = 17


@dataclass(frozen=True)
class LayerSig:
    """One layer shape.  ``cin``/``cout`` are the dense counts (K/N for Gemm and MatMul); pruning moves
    them, everything else stays.  Depthwise convs (``multiplier`` > 0) have one axis: ``cout = m*cin``."""

    op: str  # conv | gemm | matmul
    cin: int
    cout: int
    lead: tuple[int, ...]  # conv: (N, *spatial); gemm: (M,); matmul: A's leading dims
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    auto_pad: str = "NOTSET"
    group: int = 1  # grouped conv (fixed group count; channels move in steps of it)
    multiplier: int = 0  # depthwise channel multiplier, 0 when not depthwise
    bias: bool = True
    trans_b: int = 0

    @property
    def id(self) -> str:
        digest = hashlib.sha1(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:6]
        if self.op == "conv":
            k = "x".join(map(str, self.kernel))
            s = "x".join(map(str, self.strides)) if len(set(self.strides)) > 1 else str(self.strides[0])
            kind = "dw" if self.multiplier else (f"g{self.group}" if self.group > 1 else "")
            shape = "x".join(map(str, self.lead[1:]))
            return f"conv{k}s{s}{kind}_{self.cin}->{self.cout}@{shape}_b{self.lead[0]}-{digest}"
        return f"{self.op}_{self.cin}->{self.cout}_m{'x'.join(map(str, self.lead))}-{digest}"

    @property
    def step(self) -> int:
        """Channels move in steps of the group count in grouped convs (one unit per group)."""
        return self.group if self.op == "conv" and self.group > 1 and not self.multiplier else 1

    def describe(self) -> str:
        return self.id.rsplit("-", 1)[0]

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> LayerSig:
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return LayerSig(**fields)


@dataclass(frozen=True)
class Layer:
    """A Conv/Gemm/MatMul node of the model, with the spaces that hold its channel counts."""

    node: str
    sig: LayerSig
    cin: Space
    cout: Space
    in_per_channel: int = 0  # elements of the input tensor per input channel (batch and spatial)
    out_per_channel: int = 0

    def counts(self, removed: Mapping[Space, int]) -> tuple[int, int]:
        ci = self.sig.cin - removed.get(self.cin, 0)
        if self.sig.multiplier:
            return ci, ci * self.sig.multiplier
        return ci, self.sig.cout - removed.get(self.cout, 0)


def input_dims(view: GraphView, shapes: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """Concrete input shapes, from ``--shapes`` or the profiler's defaults (batch 1, sequence 16)."""
    from graphprune.targets.runner import resolve_shape

    out = {}
    for name in view.graph_inputs:
        dims = view.shape(name)
        if dims is not None:
            out[name] = resolve_shape(name, [d if d is not None else "" for d in dims], dict(shapes), [])
    return out


def concrete_shapes(view: GraphView, shapes: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """Every tensor shape ONNX inference gives once the inputs are concrete (on a weight-less copy)."""
    from graphprune.tensors import weightless

    given = input_dims(view, shapes)
    light = weightless(view.model)
    for vi in light.graph.input:
        if vi.name in given:
            vi.type.tensor_type.shape.ClearField("dim")
            for d in given[vi.name]:
                vi.type.tensor_type.shape.dim.add().dim_value = int(d)
    del light.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:  # a model inference cannot follow: its layers stay out of the table
        log.warning("shape inference with concrete inputs failed (%s); using symbolic shapes", e)
        inferred = light
    out = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
        if vi.type.tensor_type.HasField("shape") and all(d > 0 for d in dims):
            out[vi.name] = dims
    return out


def model_layers(view: GraphView, shapes: Mapping[str, Sequence[int]] | None = None) -> list[Layer]:
    """Every Conv (any group), Gemm and MatMul with a constant 2-D weight whose shapes are known."""
    known = concrete_shapes(view, shapes or {})

    def dims(t: str) -> list[int] | None:
        if t in known:
            return known[t]
        s = view.shape(t)
        return list(s) if s is not None and all(isinstance(d, int) and d > 0 for d in s) else None  # type: ignore[arg-type]

    layers = []
    for i, n in enumerate(view.nodes):
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2 or not view.is_constant(n.input[1]):
            continue
        x, w, y = dims(n.input[0]), dims(n.input[1]), dims(n.output[0])
        if x is None or w is None or y is None:
            continue
        sig, cin, cout = _signature(view, i, x, w)
        if sig is not None:
            layers.append(Layer(view.node_names[i], sig, Space(n.input[0], cin), Space(n.output[0], cout),
                                math.prod(x) // x[cin], math.prod(y) // y[cout]))
    return layers


def _signature(view: GraphView, i: int, x: list[int], w: list[int]) -> tuple[LayerSig | None, int, int]:
    n = view.nodes[i]
    bias = len(n.input) > 2 and bool(n.input[2])
    if n.op_type == "Conv":
        if len(x) < 3:
            return None, 0, 0
        group = int(view.attr(i, "group", 1))  # type: ignore[call-overload]
        rank = len(x) - 2
        auto_pad = view.attr(i, "auto_pad", b"NOTSET")
        mult = w[0] // x[1] if group == x[1] and x[1] > 1 else 0
        sig = LayerSig(
            "conv", x[1], w[0], tuple(x[:1] + x[2:]), tuple(w[2:]),
            tuple(view.attr(i, "strides", [1] * rank)),  # type: ignore[arg-type]
            tuple(view.attr(i, "pads", [0] * 2 * rank)),  # type: ignore[arg-type]
            tuple(view.attr(i, "dilations", [1] * rank)),  # type: ignore[arg-type]
            auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad),
            group=1 if mult else group, multiplier=mult, bias=bias)
        return sig, 1, 1
    if len(w) != 2:
        return None, 0, 0
    if n.op_type == "Gemm":
        ta, tb = int(view.attr(i, "transA", 0)), int(view.attr(i, "transB", 0))  # type: ignore[call-overload]
        if len(x) != 2:
            return None, 0, 0
        m, k = (x[1], x[0]) if ta else (x[0], x[1])
        return LayerSig("gemm", k, w[0] if tb else w[1], (m,), bias=bias, trans_b=tb), 0 if ta else 1, 1
    if len(x) < 2:
        return None, 0, 0
    return LayerSig("matmul", x[-1], w[1], tuple(x[:-1]), bias=False), len(x) - 1, len(x) - 1


def layer_model(sig: LayerSig, cin: int, cout: int) -> onnx.ModelProto:
    """A single-op model of ``sig`` with ``cin`` input and ``cout`` output channels."""
    rng = np.random.default_rng(cin * 7919 + cout)

    def const(name: str, shape: Sequence[int]) -> TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.05).astype(np.float32), name)

    if sig.op == "conv":
        group = cin if sig.multiplier else sig.group
        cout = cin * sig.multiplier if sig.multiplier else cout
        x_shape = [sig.lead[0], cin, *sig.lead[1:]]
        inits = [const("W", [cout, cin // group, *sig.kernel])] + ([const("B", [cout])] if sig.bias else [])
        attrs: dict[str, Any] = {"kernel_shape": list(sig.kernel), "strides": list(sig.strides),
                                 "dilations": list(sig.dilations), "group": group}
        if sig.auto_pad in ("", "NOTSET"):
            attrs["pads"] = list(sig.pads)
        else:
            attrs["auto_pad"] = sig.auto_pad
        node = helper.make_node("Conv", [INPUT, *(t.name for t in inits)], ["y"], **attrs)
    elif sig.op == "gemm":
        x_shape = [sig.lead[0], cin]
        inits = [const("W", [cout, cin] if sig.trans_b else [cin, cout])] + ([const("B", [cout])] if sig.bias else [])
        node = helper.make_node("Gemm", [INPUT, *(t.name for t in inits)], ["y"], transB=sig.trans_b)
    else:
        x_shape = [*sig.lead, cin]
        inits = [const("W", [cin, cout])]
        node = helper.make_node("MatMul", [INPUT, "W"], ["y"])
    graph = helper.make_graph([node], "latency_probe", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * len(x_shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="graphprune")
    model.ir_version = 8
    return model


def baseline_model() -> onnx.ModelProto:
    """The smallest model there is: what one call costs whatever it computes (subtracted per layer)."""
    node = helper.make_node("Neg", [INPUT], ["y"])
    graph = helper.make_graph([node], "latency_baseline", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="graphprune")
    model.ir_version = 8
    return model


# grids -------------------------------------------------------------------------------------------
WINDOW = (-16, -15, -14, -12, -9, -8, -7, -4, -2, -1, 0, 1)  # one period of 16 and its edges


def axis_grid(full: int, step: int = 1, points: int = 6) -> list[int]:
    """Channel counts to measure on one axis: ``points`` anchors on multiples of 16 up to ``full`` (the
    smooth trend), each with the count one above (just past a step edge) and the multiple of 8 below,
    plus one period of 16 near the middle sampled at every alignment (odd, 2, 4, 8, 16): enough to read
    the block size and the off-grid penalty.  Narrow layers (24 units or fewer) are measured at every
    count.  Counts are multiples of ``step`` (grouped convs)."""
    units = full // step
    if units <= 24:
        return [u * step for u in range(1, units + 1)]
    anchors = {units} | {max(16, round(units * i / points / 16) * 16) for i in range(1, max(points, 1))}
    mid = max(32, round(units / 2 / 16) * 16)
    out = {mid + d for d in WINDOW}
    for a in anchors:
        out.update((a, a + 1, a - 8))
    return sorted(u * step for u in out if 1 <= u <= units)


def sig_grid(sig: LayerSig, vary_in: bool, vary_out: bool, points: int) -> list[tuple[int, int]]:
    """(cin, cout) pairs: each varying axis at the other's dense count, plus one point with both cut
    (it gives the fixed cost that the two axes share)."""
    full = (sig.cin, sig.cout)
    if sig.multiplier:
        return [(c, c * sig.multiplier) for c in (axis_grid(sig.cin, 1, points) if vary_in else [sig.cin])]
    pairs = {full}
    if vary_in:
        pairs.update((c, sig.cout) for c in axis_grid(sig.cin, sig.step, points))
    if vary_out:
        pairs.update((sig.cin, c) for c in axis_grid(sig.cout, sig.step, points))
    if vary_in and vary_out:
        half = [_half(c, sig.step) for c in full]
        if half[0] < sig.cin and half[1] < sig.cout:
            pairs.add((half[0], half[1]))
    return sorted(pairs)


def _half(c: int, step: int) -> int:
    q = 16 * step if c >= 64 * step else step
    return max(q, (c // 2) // q * q)
