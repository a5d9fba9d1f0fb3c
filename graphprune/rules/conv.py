"""Conv and ConvTranspose: plain, depthwise (incl. channel multiplier) and grouped.

* plain (group=1): input channels are the weight's axis 1 (consumer), output channels its axis 0.
* depthwise (group == C_in > 1): input channel c owns output channels [c*m, (c+1)*m); pruning it
  removes them and lowers ``group``.  A 1-channel input with group=1 is a plain conv, not depthwise.
* grouped (1 < group < C_in): every group must keep the same width, so a prunable unit is one local
  index in every group (``modulo`` maps); ``group`` stays.
"""

from __future__ import annotations

from graphprune.rules.registry import (
    IDENTITY,
    NodeContext,
    Param,
    RuleOutput,
    Space,
    block,
    modulo,
    register,
)


def _spatial(ctx: NodeContext, res: RuleOutput, x: str, w: str, y: str) -> None:
    rx = ctx.rank(x) or 0
    res.absorbs.extend(Space(x, a) for a in range(2, rx))
    res.absorbs.extend(Space(y, a) for a in range(2, ctx.rank(y) or 0))
    res.absorbs.extend(Space(w, a) for a in range(2, ctx.rank(w) or 0))
    res.couple(Space(x, 0), Space(y, 0))  # batch


@register("Conv")
def conv(ctx: NodeContext) -> RuleOutput:
    """Plain: W axis 1 reads input channels, axis 0 writes outputs; depthwise: input c owns outputs [c*m, (c+1)*m); grouped: one local index in every group."""
    x, w, b = ctx.input(0), ctx.input(1), ctx.input(2)
    y = ctx.outputs[0]
    group = ctx.int_attr("group", 1)
    cout, cin_g = ctx.dim(w, 0), ctx.dim(w, 1)
    if cout is None or cin_g is None or ctx.rank(x) is None:
        return ctx.freeze_all(f"Conv '{ctx.name}': weight or input shape unknown")
    cin = cin_g * group
    res = RuleOutput()
    _spatial(ctx, res, x, w, y)
    w_out, w_in, x_c, y_c = Space(w, 0), Space(w, 1), Space(x, 1), Space(y, 1)
    res.couple(y_c, w_out)
    if b:
        res.couple(Space(b, 0), w_out)
        res.params.append(Param(Space(b, 0), "out", ctx.index))
    if group == 1:
        res.couple(x_c, w_in)
        res.params += [Param(w_out, "out", ctx.index), Param(w_in, "in", ctx.index)]
    elif group == cin:  # depthwise, channel multiplier m
        m = cout // group
        res.couple(x_c, w_out, block(m))
        res.absorbs.append(w_in)
        res.params.append(Param(w_out, "out", ctx.index))
    else:
        res.couple(x_c, w_in, modulo(cin_g))
        res.couple(y_c, ctx.virtual("group_width"), modulo(cout // group))
        res.params += [Param(w_out, "out", ctx.index), Param(w_in, "in", ctx.index)]
    return res


@register("ConvTranspose")
def conv_transpose(ctx: NodeContext) -> RuleOutput:
    """Weight layout is [C_in, C_out/group, k...]: axis 0 reads the input, axis 1 writes the output."""
    x, w, b = ctx.input(0), ctx.input(1), ctx.input(2)
    y = ctx.outputs[0]
    group = ctx.int_attr("group", 1)
    cin, cout_g = ctx.dim(w, 0), ctx.dim(w, 1)
    if cin is None or cout_g is None or ctx.rank(x) is None:
        return ctx.freeze_all(f"ConvTranspose '{ctx.name}': weight or input shape unknown")
    res = RuleOutput()
    _spatial(ctx, res, x, w, y)
    w_in, w_out, x_c, y_c = Space(w, 0), Space(w, 1), Space(x, 1), Space(y, 1)
    res.couple(x_c, w_in)
    if group == 1:
        res.couple(y_c, w_out)
        if b:
            res.couple(Space(b, 0), y_c)
            res.params.append(Param(Space(b, 0), "out", ctx.index))
        res.params += [Param(w_out, "out", ctx.index), Param(w_in, "in", ctx.index)]
    elif group == cin:  # depthwise: input channel c owns outputs [c*m, (c+1)*m)
        res.couple(x_c, y_c, block(cout_g))
        if b:
            res.couple(Space(b, 0), y_c)
            res.params.append(Param(Space(b, 0), "out", ctx.index))
        res.absorbs.append(w_out)
        res.params.append(Param(w_in, "out", ctx.index))
    else:
        res.couple(y_c, w_out, modulo(cout_g))
        res.couple(x_c, ctx.virtual("group_width"), modulo(cin // group))
        if b:
            res.couple(Space(b, 0), y_c, IDENTITY)
            res.params.append(Param(Space(b, 0), "out", ctx.index))
        res.params += [Param(w_out, "out", ctx.index), Param(w_in, "in", ctx.index)]
    return res
