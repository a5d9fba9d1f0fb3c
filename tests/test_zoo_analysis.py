"""The analysis on every zoo model: group structure derived by hand for the small ones."""

from __future__ import annotations

import pytest

from graphprune.analysis import analyze
from graphprune.rules import Space
from models.zoo import ZOO


def _units(a, status="prunable"):
    return sorted((g.n_units for g in a.groups if g.status == status), reverse=True)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_zoo_model_analyzes_and_frozen_groups_say_why(name):
    a = analyze(str(ZOO[name].path))
    assert a.groups
    for g in a.groups:
        if g.frozen:
            assert g.frozen_reasons and all(r.strip() for r in g.frozen_reasons)
        if g.status == "lossy":
            assert g.lossy_reasons


@pytest.mark.parametrize("name", ["resnet18", "resnet18_bn", "resnet18_dynamo"])
def test_resnet_stage_residual_stream_is_one_group(name):
    # 3 stages of widths 8/16/32, two BasicBlocks each: one stream group per stage (stem/downsample
    # conv, both blocks' second convs, the adds) and one internal group per block.
    a = analyze(str(ZOO[name].path))
    assert _units(a) == [32, 32, 32, 16, 16, 16, 8, 8, 8]
    adds = {o for n in a.view.nodes if n.op_type == "Add" for o in n.output}
    streams = [g for g in a.prunable if sum(1 for s in g.spaces if s.tensor in adds) >= 2]
    assert sorted(g.n_units for g in streams) == [8, 16, 32]


def test_mobilenetv2_depthwise_ties_expansion_to_projection_input():
    a = analyze(str(ZOO["mobilenetv2"].path))
    view = a.view
    dw = [i for i, n in enumerate(view.nodes) if n.op_type == "Conv" and view.attr(i, "group", 1) != 1]
    assert dw
    for i in dw:
        node = view.nodes[i]
        (g,) = a.group_of(Space(node.input[1], 0))
        assert Space(node.input[0], 1) in g.indices  # input and output channels in one group
        assert g.prunable


def test_densenet_concat_offsets():
    a = analyze(str(ZOO["densenet"].path))
    view = a.view
    for node in view.nodes:
        if node.op_type != "Concat" or len(node.input) < 2:
            continue
        off = 0
        for x in node.input:
            n = view.static_dim(x, 1)
            for g in a.group_of(Space(x, 1)):
                if Space(node.output[0], 1) in g.indices:
                    assert (g.indices[Space(node.output[0], 1)] - g.indices[Space(x, 1)] == off).all()
            off += n


def test_bert_heads_and_ffn_groups():
    a = analyze(str(ZOO["bert"].path))
    # 2 layers x (4 heads of 8 dims tying Q, K, V and the output projection; 128 FFN neurons)
    assert _units(a) == [128, 128, 4, 4]
    heads = [g for g in a.prunable if g.n_units == 4]
    for g in heads:
        per = {g.channels_per_unit(p.space) for p in g.params if p.role == "out" and p.space.axis == 1}
        assert per == {8}
        assert len([p for p in g.params if p.role == "in"]) == 1  # the output projection


def test_vit_heads_through_fused_qkv():
    a = analyze(str(ZOO["vit"].path))
    heads = [g for g in a.prunable if g.n_units == 4]
    assert len(heads) == 2
    for g in heads:
        qkv = [p for p in g.params if p.role == "out" and p.space.axis == 1]
        assert qkv and all(g.channels_per_unit(p.space) == 3 * 8 for p in qkv if "qkv" in p.space.tensor)


def test_convnext_channels_last_layernorm_groups_are_lossy():
    a = analyze(str(ZOO["convnext"].path))
    lossy = [g for g in a.groups if g.status == "lossy"]
    assert len(lossy) == 3
    assert all(any("LayerNormalization" in r for r in g.lossy_reasons) for g in lossy)


def test_lstm_is_frozen_with_reason():
    a = analyze(str(ZOO["lstm_model"].path))
    assert not a.prunable
    assert any("recurrent op 'LSTM'" in r for g in a.groups for r in g.frozen_reasons)


def test_paddleocr_constant_weights_and_decomposed_hardswish():
    a = analyze(str(ZOO["paddleocr_cls"].path))
    assert len(a.prunable) >= 20
    # weights live in Constant nodes, and they are members of the groups
    consts = {n.output[0] for n in a.view.nodes if n.op_type == "Constant"}
    assert any(p.space.tensor in consts for g in a.prunable for p in g.params)
