"""Operators that freeze every channel they touch, each with a specific reason, and shape readers."""

from __future__ import annotations

import numpy as np

from graphprune.rules.registry import NodeContext, RuleOutput, Space, register


@register("If", "Loop", "Scan")
def control_flow(ctx: NodeContext) -> RuleOutput:
    """Freezes everything it touches, including tensors its subgraphs read implicitly."""
    return ctx.freeze_all(f"control flow '{ctx.op}' ('{ctx.name}'): subgraphs are not analysed")


@register(
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "ConvInteger", "MatMulInteger",
)
def quantized(ctx: NodeContext) -> RuleOutput:
    """Quantized ops freeze: prune the float model, then quantize."""
    return ctx.freeze_all(f"quantized op '{ctx.op}' ('{ctx.name}'): prune the float model, then quantize")


@register("LSTM", "GRU", "RNN")
def recurrent(ctx: NodeContext) -> RuleOutput:
    """Recurrent ops freeze: gate-packed weights are not pruned."""
    return ctx.freeze_all(f"recurrent op '{ctx.op}' ('{ctx.name}'): gate-packed weights are not pruned")


@register("Constant")
def constant(ctx: NodeContext) -> RuleOutput:
    """Values are read through the graph view; consumers decide."""
    res = RuleOutput()  # values are read through the graph view; consumers decide
    res.absorbs.extend(ctx.all_spaces(ctx.outputs[0]))
    return res


@register("Shape")
def shape(ctx: NodeContext) -> RuleOutput:
    """Reading a tensor's shape is harmless unless the channel count flows into later arithmetic."""
    x = ctx.input(0)
    r = ctx.rank(x)
    if r is None:
        return ctx.freeze_all(f"Shape '{ctx.name}': rank unknown")
    start = ctx.int_attr("start", 0)
    end = ctx.int_attr("end", r)
    start, end = (start + r if start < 0 else start), (end + r if end < 0 else end)
    exposed = set(range(max(start, 0), min(end, r)))
    read = _dims_read(ctx, exposed, start)
    if read and ctx.view.folder.shape_uses_ok(ctx.outputs[0]):
        read = set()  # only feeds shape inputs that the passes rewrite to constants
    res = RuleOutput()
    for a in range(r):
        if a in read:
            res.freezes.append((Space(x, a), f"Shape '{ctx.name}': the size of axis {a} feeds shape arithmetic"))
        else:
            res.absorbs.append(Space(x, a))
    res.absorbs.extend(ctx.all_spaces(ctx.outputs[0]))
    return res


def _dims_read(ctx: NodeContext, exposed: set[int], start: int) -> set[int]:
    """Dims of the Shape output actually used: refine through Gather/Slice with constant indices."""
    view = ctx.view
    read: set[int] = set()
    for ci in view.consumers.get(ctx.outputs[0], []):
        node = view.nodes[ci]
        if node.op_type == "Gather" and node.input[0] == ctx.outputs[0]:
            idx = view.small_constant(node.input[1])
            if idx is not None:
                n = len(exposed)
                read.update(start + (int(i) + n if i < 0 else int(i)) for i in np.asarray(idx).ravel())
                continue
        if node.op_type == "Slice" and node.input[0] == ctx.outputs[0] and len(node.input) >= 3:
            s, e = view.small_constant(node.input[1]), view.small_constant(node.input[2])
            if s is not None and e is not None:
                n = len(exposed)
                read.update(start + i for i in range(n)[slice(int(np.ravel(s)[0]), int(np.ravel(e)[0]))])
                continue
        return exposed
    return read


@register("Size")
def size(ctx: NodeContext) -> RuleOutput:
    """The element count feeds arithmetic: frozen."""
    return ctx.freeze_all(f"Size '{ctx.name}': total element count feeds arithmetic")


@register("Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention",
          "PackedMultiHeadAttention", "DecoderMaskedMultiHeadAttention", "SkipLayerNormalization",
          "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization", "RotaryEmbedding",
          domain="com.microsoft")
def fused_ms(ctx: NodeContext) -> RuleOutput:
    """Fused ORT transformer ops: frozen with the reason (head counts are not rewritten)."""
    return ctx.freeze_all(
        f"fused com.microsoft::{ctx.op} ('{ctx.name}'): its num_heads/hidden attributes are not rewritten; "
        "export without ORT transformer fusions to prune it"
    )


@register("Attention", "RotaryEmbedding", opsets=(23, None))
def fused_onnx_attention(ctx: NodeContext) -> RuleOutput:
    """ONNX opset-23 fused attention: frozen with the reason."""
    return ctx.freeze_all(
        f"fused ONNX {ctx.op} ('{ctx.name}', opset 23+): head counts are not rewritten; export attention "
        "as MatMul/Softmax to prune heads"
    )
