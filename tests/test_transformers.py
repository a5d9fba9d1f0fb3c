"""Attention heads, head dims (RoPE pairs), GQA, SwiGLU FFN and external data, from the graph alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import graphprune
from graphprune.analysis import analyze
from graphprune.rules import AnalysisOptions, Space
from models.llama import LlamaConfig, build
from models.zoo import ZOO

CFG = LlamaConfig()  # hidden 64, 4 heads of 16, 2 KV heads, FFN 128, 2 layers


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build(CFG, tmp_path_factory.mktemp("llama") / "llama.onnx")


def test_llama_groups_gqa_heads_swiglu_ffn_and_lossy_hidden(llama):
    a = analyze(str(llama))
    heads = [g for g in a.prunable if g.kind == "heads"]
    ffn = [g for g in a.prunable if g.kind == "channels"]
    assert sorted(g.n_units for g in heads) == [CFG.kv_heads] * CFG.layers
    assert sorted(g.n_units for g in ffn) == [CFG.ffn] * CFG.layers
    n_rep = CFG.heads // CFG.kv_heads
    for g in heads:
        q = next(p.space for p in g.params if "q_proj" in p.space.tensor)
        k = next(p.space for p in g.params if "k_proj" in p.space.tensor)
        o = next(p.space for p in g.params if "o_proj" in p.space.tensor)
        assert g.channels_per_unit(q) == n_rep * CFG.head_dim  # a KV head takes its query heads along
        assert g.channels_per_unit(k) == CFG.head_dim
        assert g.channels_per_unit(o) == n_rep * CFG.head_dim
    for g in ffn:  # gate and up are tied through SiLU(gate) * up
        assert {"gate_proj", "up_proj", "down_proj"} <= {p.space.tensor.split(".")[-2] for p in g.params}
    hidden = [g for g in a.groups if g.status == "lossy"]
    assert len(hidden) == 1 and hidden[0].n_units == CFG.hidden


def test_llama_head_dim_units_are_rope_pairs(llama):
    a = analyze(str(llama), AnalysisOptions(split_preference="head-dim"))
    qk = [g for g in a.prunable if g.kind == "head-dim" and any("q_proj" in p.space.tensor for p in g.params)]
    assert qk
    d = CFG.head_dim
    (g,) = qk  # the shared RoPE tables tie the layers' q/k head dims together
    assert g.n_units == d // 2
    k = next(p.space for p in g.params if "k_proj" in p.space.tensor)
    for unit in g.indices[k]:
        dims = sorted({int(i) % d for i in unit})
        assert len(dims) == 2 and dims[1] - dims[0] == d // 2  # rotate-half ties dim j to j + d/2
        assert len(unit) == 2 * CFG.kv_heads  # the same pair in every KV head


@pytest.mark.parametrize("kw", [
    {"heads": 0.5}, {"ratio": 0.25}, {"ratio": 0.5, "heads": 0.5}, {"head_dim": 0.25}, {"head_dim": 0.5, "ratio": 0.25},
])
def test_llama_shrinks_exactly_with_external_data(llama, tmp_path, kw):
    out = tmp_path / "p.onnx"
    r = graphprune.shrink(str(llama), output=str(out), **kw)
    assert r.verify.passed and r.verify.exact
    assert r.macs_after < r.macs_before
    assert (tmp_path / "p.onnx.data").exists()  # saved with external data again
    m = onnx.load(str(out), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)
    if "head_dim" in kw:
        assert any("kept as exported" in w for w in r.warnings)


def test_heads_and_head_dim_together_are_two_proven_passes(llama, tmp_path):
    """--heads and --head-dim in one run equal --heads, then --head-dim on its output."""
    import onnxruntime as ort

    both = graphprune.shrink(str(llama), heads=0.5, head_dim=0.25, ratio=0.25, output=str(tmp_path / "both.onnx"))
    step = graphprune.shrink(str(llama), heads=0.5, ratio=0.25, output=str(tmp_path / "step.onnx"))
    two = graphprune.shrink(str(tmp_path / "step.onnx"), head_dim=0.25, output=str(tmp_path / "two.onnx"))
    assert (both.params_before, both.params_after, both.macs_after) == (step.params_before, two.params_after,
                                                                        two.macs_after)
    assert len(both.earlier) == 1 and both.earlier[0].verify.passed and both.verify.passed
    assert sum(line.startswith("verify") for line in both.summary().splitlines()) == 2
    assert "earlier_passes" in both.report()
    feed = {"input_ids": np.arange(8, dtype=np.int64).reshape(2, 4)}
    run = [ort.InferenceSession(str(tmp_path / f"{n}.onnx")).run(None, feed)[0] for n in ("both", "two")]
    np.testing.assert_array_equal(run[0], run[1])
    with pytest.raises(graphprune_usage_error(), match="two passes"):
        graphprune.shrink(str(llama), heads=0.5, head_dim=0.5, target_macs=0.5, write=False)


def graphprune_usage_error():
    from graphprune.errors import UsageError

    return UsageError


@pytest.mark.parametrize("name", ["bert", "vit"])
@pytest.mark.parametrize("kw", [{"heads": 0.25}, {"heads": 0.5, "ratio": 0.5}, {"head_dim": 0.25},
                                {"head_dim": 0.5, "ratio": 0.25}])
def test_encoders_shrink_heads_head_dim_and_ffn(name, kw):
    r = graphprune.shrink(str(ZOO[name].path), write=False, **kw)
    assert r.verify.passed and r.verify.exact
    assert r.macs_after < r.macs_before


def test_fused_attention_is_frozen_with_reason():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 8])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8])
    w = onnx.numpy_helper.from_array(np.ones((8, 24), np.float32), "w")
    b = onnx.numpy_helper.from_array(np.zeros(24, np.float32), "b")
    w2 = onnx.numpy_helper.from_array(np.ones((8, 8), np.float32), "w2")
    nodes = [helper.make_node("Attention", ["x", "w", "b"], ["a"], domain="com.microsoft", num_heads=2, name="att"),
             helper.make_node("MatMul", ["a", "w2"], ["y"], name="proj")]
    g = helper.make_graph(nodes, "g", [x], [y], [w, b, w2],
                          value_info=[helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [1, 4, 8])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    a = analyze(m)
    (grp,) = a.group_of(Space("w2", 0))
    assert grp.frozen and any("fused com.microsoft::Attention" in r for r in grp.frozen_reasons)


def _tied_lm(norm: bool) -> onnx.ModelProto:
    """ids -> Gather(E) -> residual FFN [-> LayerNorm] -> MatMul(., Transpose(E)): input and output
    embeddings share one table."""
    from onnx import TensorProto, numpy_helper

    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("E", (50, 12)), ("W1", (12, 24)), ("W2", (24, 12)))]
    nodes = [helper.make_node("Gather", ["E", "ids"], ["e"]), helper.make_node("MatMul", ["e", "W1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]), helper.make_node("MatMul", ["r", "W2"], ["f"]),
             helper.make_node("Add", ["e", "f"], ["z"])]
    last = "z"
    if norm:
        inits += [numpy_helper.from_array(np.ones(12, np.float32), "g"),
                  numpy_helper.from_array(np.zeros(12, np.float32), "b")]
        nodes.append(helper.make_node("LayerNormalization", ["z", "g", "b"], ["zn"], axis=-1))
        last = "zn"
    nodes += [helper.make_node("Transpose", ["E"], ["Et"], perm=[1, 0]),
              helper.make_node("MatMul", [last, "Et"], ["logits"])]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "S"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", "S", 50])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("norm", [False, True])
def test_tied_embeddings_prune_the_shared_table_once(norm):
    """The embedding width is one group through the Gather, the residual and the transposed output
    projection; pruning it slices the one shared table, and the proof zeroes the contraction too."""
    model = _tied_lm(norm)
    a = analyze(model)
    width = next(g for g in a.groups if Space("E", 1) in g.spaces)
    assert Space("Et", 0) in width.spaces and width.lossy == norm
    r = graphprune.shrink(model, ratio=0.25, allow_lossy=True, write=False)
    assert r.verify is not None and r.verify.passed and r.verify.exact  # LayerNorm: over the kept channels
    assert r.verify.rel_diff < 1e-5
    inits = {t.name: list(t.dims) for t in r.model.graph.initializer}
    assert inits["E"] == [50, 9] and sum(1 for n in inits if n.startswith("E")) == 1
    onnx.checker.check_model(r.model, full_check=True)


def _decomposed_layernorm_net() -> onnx.ModelProto:
    """x -> MatMul -> (x - mean) / sqrt(var + eps) spelled out (TF/Paddle style) -> MatMul."""
    from onnx import TensorProto, numpy_helper

    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("W1", (6, 16)), ("W2", (16, 4)))]
    inits += [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("two", 2.0), ("eps", 1e-5))]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["mu"], axes=[-1], keepdims=1),
             helper.make_node("Sub", ["h", "mu"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["d2"]),
             helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1], keepdims=1),
             helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["n"]), helper.make_node("MatMul", ["n", "W2"], ["y"])]
    graph = helper.make_graph(nodes, "dln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_lossy_hidden_cut_is_proven_against_statistics_over_kept_channels(llama):
    """RMSNorm's mean is taken over the kept channels: the exact reference reproduces the pruned
    model, while the zeroed reference (means over the full width) does not."""
    from graphprune.lossy_reference import plan_rewrite
    from graphprune.pruner import masking_spaces
    from graphprune.verify import compare, consumer_zeroing, masked_reference

    r = graphprune.shrink(str(llama), ratio=0.25, allow_lossy=True, write=False)
    hidden = [d for d in r.allocation.decisions.values() if r.analysis.groups[d.group_id].lossy]
    assert hidden and all(d.removed == CFG.hidden // 4 for d in hidden)
    assert r.verify is not None and r.verify.passed and r.verify.exact and "kept channels" in r.verify.summary()
    lossy = {d.group_id for d in hidden}
    rewrite = plan_rewrite(r.analysis, r.plan.keep, r.plan.sizes, lossy)
    assert rewrite.blocker is None and len(rewrite.rescale) == 2 * CFG.layers + 1  # every RMSNorm's mean
    spaces = masking_spaces(r.analysis) | {p.space for g in r.analysis.groups if g.id in lossy for p in g.params
                                           if p.role in ("out", "const")}
    zeroed = masked_reference(r.analysis.view.model, consumer_zeroing(r.plan.keep, r.plan.sizes, spaces))
    feeds = [{"input_ids": np.arange(6, dtype=np.int64).reshape(1, 6)}]
    wrong = compare(r.model, zeroed, feeds)
    assert not wrong.passed and wrong.rel_diff > 1e-2


def test_vit_hidden_cut_through_cls_token_expand_and_layernorm():
    """The class token's Expand has a computed target ([B, 1, 1] via Where/ConstantOfShape): its
    pruned axis is a broadcast 1 and needs no rewrite; LayerNormalization is recomputed over kept."""
    r = graphprune.shrink(ZOO["vit"].path, ratio=0.25, allow_lossy=True, write=False)
    assert any(d.removed for d in r.allocation.decisions.values() if r.analysis.groups[d.group_id].lossy)
    assert r.verify is not None and r.verify.passed and r.verify.exact


def test_lossy_cut_through_a_decomposed_layernorm_is_approximate_and_says_why():
    r = graphprune.shrink(_decomposed_layernorm_net(), ratio=0.25, allow_lossy=True, write=False)
    assert r.verify is not None and r.verify.passed and not r.verify.exact
    assert "Sub '" in r.verify.note and "broadcast" in r.verify.note


def test_obspa_with_sensitivity_on_external_data(llama, tmp_path):
    """Weights on disk: OBSPA statistics and the sensitivity trials run from saved copies (ONNX Runtime
    refuses absolute external paths), the output keeps external data, the proof passes."""
    r = graphprune.shrink(str(llama), ratio=0.25, method="obspa", sensitivity=True, output=str(tmp_path / "o.onnx"))
    assert r.verify is not None and r.verify.passed and r.sensitivity.trials > 0
    assert {c.stats for c in r.obspa.consumers} == {"natural"}
    assert (tmp_path / "o.onnx.data").exists()
