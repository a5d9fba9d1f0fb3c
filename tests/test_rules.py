"""Table tests: every channel rule on a tiny Conv -> op -> Conv graph."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from graphprune.analysis import analyze
from graphprune.rules import Space, registered
from tests.graphs import RNG, G, conv_sandwich


def producer_group(m, g=None):
    a = analyze(m)
    w = m.graph.node[0].input[1]  # first conv's weight
    (grp,) = a.group_of(Space(w, 0))
    return a, grp


def per_unit(grp, tensor_prefix_or_name, axis):
    for s in grp.spaces:
        if s.tensor == tensor_prefix_or_name and s.axis == axis:
            return grp.channels_per_unit(s)
    return None


C = 8


def _unary(op, **attrs):
    def mid(g, y):
        return g.op(op, y, **attrs), C
    return mid


UNARY_OPS = ["Relu", "LeakyRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
             "Softsign", "Erf", "Exp", "Abs", "Neg", "Identity", "Sqrt", "Floor", "Ceil", "Sin", "Cos"]


@pytest.mark.parametrize("op", UNARY_OPS)
def test_unary_passes_channels_through(op):
    m = conv_sandwich(_unary(op))
    _, grp = producer_group(m)
    assert grp.prunable and grp.n_units == C
    out = m.graph.node[1].output[0]
    assert Space(out, 1) in grp.indices


def test_gelu_opset20_and_cast_dropout_clip():
    def mid(g, y):
        y = g.op("Gelu", y)
        y = g.op("Cast", y, to=1)
        y = g.node("Dropout", [y], 1)[0]
        lo, hi = g.const(np.array(0.0, np.float32)), g.const(np.array(6.0, np.float32))
        return g.op("Clip", y, lo, hi), C
    _, grp = producer_group(conv_sandwich(mid, opset=20))
    assert grp.prunable and grp.n_units == C


def test_per_channel_constant_joins_group_scalar_does_not():
    consts = {}

    def mid(g, y):
        consts["pc"] = g.const(RNG.standard_normal((1, C, 1, 1)).astype(np.float32), "pc")
        consts["sc"] = g.const(np.array(2.0, np.float32), "sc")
        consts["c3"] = g.const(RNG.standard_normal((C, 1, 1)).astype(np.float32), "c3")
        y = g.op("Add", y, consts["pc"])
        y = g.op("Mul", y, consts["sc"])
        return g.op("Div", y, consts["c3"]), C
    _, grp = producer_group(conv_sandwich(mid))
    assert grp.prunable and grp.n_units == C
    assert Space(consts["pc"], 1) in grp.indices
    assert Space(consts["c3"], 0) in grp.indices
    assert not any(s.tensor == consts["sc"] for s in grp.spaces)


def test_size_one_broadcast_never_couples_one_to_c():
    def mid(g, y):
        att = g.conv(y, C, 1, 1)  # [N,1,H,W] spatial attention map
        return g.op("Mul", y, g.op("Sigmoid", att)), C
    m = conv_sandwich(mid)
    a, grp = producer_group(m)
    assert grp.prunable and grp.n_units == C
    att_w = m.graph.node[1].input[1]
    (att_grp,) = a.group_of(Space(att_w, 0))
    assert att_grp.n_units == 1 and att_grp.id != grp.id


def test_residual_add_of_two_branches_is_one_group():
    def mid(g, y):
        b = g.conv(y, C, C, 3)
        return g.op("Add", y, b), C
    m = conv_sandwich(mid)
    _, grp = producer_group(m)
    assert grp.n_units == C
    assert Space(m.graph.node[1].input[1], 0) in grp.indices  # the branch conv's output weights


def test_se_block_mul_couples_excitation_output():
    def mid(g, y):
        s = g.op("GlobalAveragePool", y)
        s = g.op("Relu", g.conv(s, C, 2, 1))
        s = g.op("HardSigmoid", g.conv(s, 2, C, 1))
        return g.op("Mul", y, s), C
    m = conv_sandwich(mid)
    a, grp = producer_group(m)
    assert grp.prunable and grp.n_units == C
    excite_w = m.graph.node[4].input[1]
    assert Space(excite_w, 0) in grp.indices
    squeeze_w = m.graph.node[2].input[1]
    (sq,) = a.group_of(Space(squeeze_w, 0))
    assert sq.n_units == 2 and sq.prunable


def test_silu_mul_by_sigmoid():
    _, grp = producer_group(conv_sandwich(lambda g, y: (g.op("Mul", y, g.op("Sigmoid", y)), C)))
    assert grp.prunable and grp.n_units == C


def test_concat_offsets_map_to_consumer_columns():
    def mid(g, y):
        b = g.conv(y, C, 4, 1)
        return g.op("Concat", y, b, axis=1), C + 4
    m = conv_sandwich(mid)
    a = analyze(m)
    consumer_w = m.graph.node[-1].input[1]
    g_a = a.group_of(Space(m.graph.node[0].input[1], 0))[0]
    g_b = a.group_of(Space(m.graph.node[1].input[1], 0))[0]
    assert g_a.n_units == C and g_b.n_units == 4
    assert g_a.indices[Space(consumer_w, 1)].ravel().tolist() == list(range(C))
    assert g_b.indices[Space(consumer_w, 1)].ravel().tolist() == list(range(C, C + 4))


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_split_attribute_input_and_num_outputs_forms(opset):
    def mid(g, y):
        if opset == 11:
            p, q = g.node("Split", [y], 2, axis=1, split=[3, 5])
        elif opset == 13:
            p, q = g.node("Split", [y, g.const(np.array([3, 5], np.int64), "s")], 2, axis=1)
        else:
            p, q = g.node("Split", [y], 2, axis=1, num_outputs=2)
        return g.op("Concat", q, p, axis=1), C
    m = conv_sandwich(mid, opset=opset)
    a = analyze(m)
    prod_w = m.graph.node[0].input[1]
    consumer_w = m.graph.node[-1].input[1]
    first = 3 if opset != 18 else 4
    groups = sorted(a.group_of(Space(prod_w, 0)), key=lambda g: g.indices[Space(prod_w, 0)][0, 0])
    assert [g.n_units for g in groups] == [first, C - first]
    assert all(g.prunable for g in groups)
    # producer channel c lands in consumer column c+(C-first) (first part) or c-first (second part)
    for g in groups:
        prod = g.indices[Space(prod_w, 0)].ravel()
        cols = g.indices[Space(consumer_w, 1)].ravel()
        assert cols.tolist() == [c - first if c >= first else c + (C - first) for c in prod]


def test_slice_splits_group_by_footprint():
    def mid(g, y):
        s = g.const(np.array([2], np.int64), "s")
        e = g.const(np.array([6], np.int64), "e")
        ax = g.const(np.array([1], np.int64), "a")
        return g.op("Slice", y, s, e, ax), 4
    m = conv_sandwich(mid)
    a = analyze(m)
    consumer_w = m.graph.node[-1].input[1]
    (g_in,) = a.group_of(Space(consumer_w, 1))
    assert g_in.n_units == 4
    assert g_in.indices[Space(m.graph.node[0].input[1], 0)].ravel().tolist() == [2, 3, 4, 5]


def _flatten_to_gemm(reshape: bool):
    g = G()
    y = g.conv("x", 3, C, 3)
    y = g.op("MaxPool", y, kernel_shape=[3, 3], strides=[3, 3])  # 6x6 -> 2x2
    if reshape:
        y = g.op("Reshape", y, g.const(np.array([0, -1], np.int64), "shape"))
    else:
        y = g.op("Flatten", y, axis=1)
    w = g.const(RNG.standard_normal((10, C * 4)).astype(np.float32))
    out = g.op("Gemm", y, w, g.const(np.zeros(10, np.float32), "b"), transB=1)
    return g.build({"x": ["N", 3, 6, 6]}, [out]), w


@pytest.mark.parametrize("reshape", [False, True])
def test_flatten_channel_becomes_block_of_features(reshape):
    m, w = _flatten_to_gemm(reshape)
    _, grp = producer_group(m)
    assert grp.prunable and grp.n_units == C
    idx = grp.indices[Space(w, 1)]
    assert idx.shape == (C, 4)
    assert idx[3].tolist() == [12, 13, 14, 15]


def test_channels_last_layernorm_is_lossy():
    def mid(g, y):
        t = g.op("Transpose", y, perm=[0, 2, 3, 1])
        ln = g.op("LayerNormalization", t, g.const(np.ones(C, np.float32), "g"),
                  g.const(np.zeros(C, np.float32), "b"), axis=-1)
        t = g.linear(ln, C, C)
        return g.op("Transpose", t, perm=[0, 3, 1, 2]), C
    m = conv_sandwich(mid)
    _, grp = producer_group(m)
    assert grp.lossy and not grp.prunable and grp.status == "lossy"
    assert any("LayerNormalization" in r for r in grp.lossy_reasons)


def test_decomposed_layernorm_over_channels_is_lossy():
    def mid(g, y):
        mean = g.op("ReduceMean", y, axes=[1], keepdims=1)
        d = g.op("Sub", y, mean)
        var = g.op("ReduceMean", g.op("Pow", d, g.const(np.array(2.0, np.float32), "p")), axes=[1], keepdims=1)
        den = g.op("Sqrt", g.op("Add", var, g.const(np.array(1e-5, np.float32), "eps")))
        return g.op("Div", d, den), C
    _, grp = producer_group(conv_sandwich(mid))
    assert grp.lossy
    assert any("ReduceMean" in r for r in grp.lossy_reasons)


def test_reduce_over_spatial_is_exact():
    def mid(g, y):
        return g.op("ReduceMean", y, axes=[2, 3], keepdims=1), C
    _, grp = producer_group(conv_sandwich(mid))
    assert grp.prunable


def test_softmax_over_channels_is_lossy():
    _, grp = producer_group(conv_sandwich(lambda g, y: (g.op("Softmax", y, axis=1), C)))
    assert grp.lossy


@pytest.mark.parametrize("mult", [1, 2])
def test_depthwise_ties_input_and_output(mult):
    def mid(g, y):
        return g.conv(y, C, C * mult, 3, group=C), C * mult
    m = conv_sandwich(mid)
    _, grp = producer_group(m)
    assert grp.prunable and grp.n_units == C
    dw_w = m.graph.node[1].input[1]
    assert grp.channels_per_unit(Space(dw_w, 0)) == mult
    assert grp.indices[Space(dw_w, 0)][1].tolist() == [mult * 1 + k for k in range(mult)]


def test_grouped_conv_units_are_one_local_index_per_group():
    def mid(g, y):
        return g.conv(y, C, 12, 3, group=2), 12
    m = conv_sandwich(mid)
    a, grp = producer_group(m)
    assert grp.n_units == C // 2
    assert grp.indices[Space(m.graph.node[0].input[1], 0)][1].tolist() == [1, 5]
    (out_grp,) = a.group_of(Space(m.graph.node[1].input[1], 0))
    assert out_grp.n_units == 6
    assert out_grp.indices[Space(m.graph.node[1].input[1], 0)][0].tolist() == [0, 6]


def test_single_input_channel_conv_is_not_depthwise():
    g = G()
    y = g.conv("x", 1, C, 3)
    out = g.conv(g.op("Relu", y), C, 4)
    m = g.build({"x": ["N", 1, 6, 6]}, [out])
    a = analyze(m)
    (grp,) = a.group_of(Space(m.graph.node[0].input[1], 0))
    assert grp.prunable and grp.n_units == C
    (inp,) = a.group_of(Space(m.graph.node[0].input[1], 1))
    assert inp.frozen and inp.n_units == 1


@pytest.mark.parametrize("group", [1, 8])
def test_conv_transpose_layout(group):
    def mid(g, y):
        cout = C if group > 1 else 6
        return g.convt(y, C, cout, group=group), cout
    m = conv_sandwich(mid)
    a, grp = producer_group(m)
    ct_w = m.graph.node[1].input[1]
    assert Space(ct_w, 0) in grp.indices
    assert grp.prunable and grp.n_units == C
    if group == 1:
        (out,) = a.group_of(Space(ct_w, 1))
        assert out.n_units == 6 and out.prunable


def test_norms_join_their_channels():
    def mid(g, y):
        y = g.bn(y, C)
        y = g.op("InstanceNormalization", y, g.const(np.ones(C, np.float32), "s"), g.const(np.zeros(C, np.float32), "b"))
        return y, C
    m = conv_sandwich(mid)
    _, grp = producer_group(m)
    assert grp.prunable
    assert sum(1 for p in grp.params if p.role == "affine") == 6


@pytest.mark.parametrize("opset,param_size", [(18, 4), (21, C)])
def test_group_norm_units_are_whole_groups(opset, param_size):
    def mid(g, y):
        s = g.const(np.ones(param_size, np.float32), "s")
        b = g.const(np.zeros(param_size, np.float32), "b")
        return g.op("GroupNormalization", y, s, b, num_groups=4), C
    m = conv_sandwich(mid, opset=opset)
    _, grp = producer_group(m)
    assert grp.prunable and grp.n_units == 4
    assert grp.indices[Space(m.graph.node[0].input[1], 0)][1].tolist() == [2, 3]


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", {"kernel_shape": [2, 2]}), ("AveragePool", {"kernel_shape": [2, 2]}),
    ("GlobalAveragePool", {}), ("GlobalMaxPool", {}), ("LpPool", {"kernel_shape": [2, 2]}),
])
def test_pooling_keeps_channels(op, attrs):
    _, grp = producer_group(conv_sandwich(lambda g, y: (g.op(op, y, **attrs), C)))
    assert grp.prunable and grp.n_units == C


def test_resize_pad_prelu_keep_channels():
    def mid(g, y):
        scales = g.const(np.array([1, 1, 2, 2], np.float32), "sc")
        y = g.op("Resize", y, "", scales, mode="nearest")
        pads = g.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "p")
        y = g.op("Pad", y, pads)
        return g.op("PRelu", y, g.const(np.full((C, 1, 1), 0.1, np.float32), "slope")), C
    m = conv_sandwich(mid)
    _, grp = producer_group(m)
    assert grp.prunable and grp.n_units == C
    assert any(p.role == "const" for p in grp.params)


def test_pad_on_channel_axis_freezes():
    def mid(g, y):
        pads = g.const(np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64), "p")
        return g.op("Pad", y, pads), C + 2
    _, grp = producer_group(conv_sandwich(mid))
    assert grp.frozen and any("pads axis 1" in r for r in grp.frozen_reasons)


def test_squeeze_unsqueeze_into_matmul():
    g = G(13)
    y = g.conv("x", 3, C, 3)
    y = g.op("GlobalAveragePool", y)
    y = g.op("Squeeze", y, g.const(np.array([2, 3], np.int64), "ax"))
    y = g.linear(y, C, 5)
    y = g.op("Unsqueeze", y, g.const(np.array([1], np.int64), "ax"))
    m = g.build({"x": ["N", 3, 6, 6]}, [y])
    _, grp = producer_group(m)
    assert grp.prunable and grp.n_units == C


def test_unknown_custom_op_freezes_with_reason():
    def mid(g, y):
        n = helper.make_node("Mystery", [y], ["myst"], name="mystery", domain="com.example")
        g.nodes.append(n)
        return "myst", C
    g = G()
    y = g.conv("x", 3, C, 3)
    y, _ = mid(g, y)
    out = g.conv(y, C, 4)
    m = g.build({"x": ["N", 3, 6, 6]}, [out])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    a = analyze(m)
    (grp,) = a.group_of(Space(m.graph.node[0].input[1], 0))
    assert grp.frozen
    assert any("no channel rule for com.example::Mystery" in r for r in grp.frozen_reasons)


def test_quantized_and_control_flow_freeze():
    g = G()
    y = g.conv("x", 3, C, 3)
    q = g.op("QuantizeLinear", y, g.const(np.array(0.1, np.float32), "s"), g.const(np.array(0, np.uint8), "z"))
    dq = g.op("DequantizeLinear", q, g.const(np.array(0.1, np.float32), "s"), g.const(np.array(0, np.uint8), "z"))
    out = g.conv(dq, C, 4)
    m = g.build({"x": ["N", 3, 6, 6]}, [out])
    _, grp = producer_group(m)
    assert grp.frozen and any("quantized" in r for r in grp.frozen_reasons)


def test_registry_rejects_duplicates_and_lists_rules():
    from graphprune.errors import InternalError
    from graphprune.rules import register

    with pytest.raises(InternalError):
        register("Conv")(lambda ctx: None)
    ops = {e.op_type for e in registered()}
    for op in ("Conv", "ConvTranspose", "Gemm", "MatMul", "Reshape", "Concat", "Split", "Slice",
               "BatchNormalization", "LayerNormalization", "GroupNormalization", "Resize", "If", "Softmax"):
        assert op in ops
