"""Normalisations.  Per-channel ones (BatchNorm, InstanceNorm) are exact; GroupNorm is exact when
whole groups go; LayerNorm/RMSNorm over a pruned axis change the statistics: lossy couplings."""

from __future__ import annotations

from graphprune.rules.broadcast import elementwise
from graphprune.rules.registry import NodeContext, Param, RuleOutput, Space, block, register


@register("BatchNormalization")
def batch_norm(ctx: NodeContext) -> RuleOutput:
    """Per channel and exact: scale, bias, mean and variance are sliced with the channels."""
    if ctx.int_attr("training_mode", 0) or len([o for o in ctx.outputs if o]) > 1:
        return ctx.freeze_all(f"BatchNormalization '{ctx.name}' in training mode (running-stat outputs)")
    return _per_channel(ctx)


@register("InstanceNormalization")
def instance_norm(ctx: NodeContext) -> RuleOutput:
    """Per channel and exact."""
    return _per_channel(ctx)


def _per_channel(ctx: NodeContext) -> RuleOutput:
    x, y = ctx.input(0), ctx.outputs[0]
    res = elementwise(ctx, [x], [y])
    for p in ctx.inputs[1:]:
        if p:
            res.couple(Space(p, 0), Space(x, 1))
            res.params.append(Param(Space(p, 0), "affine", ctx.index))
    return res


@register("GroupNormalization", opsets=(18, None))
def group_norm(ctx: NodeContext) -> RuleOutput:
    """A unit is one whole group of C/num_groups channels; scale/bias are per group (opset 18) or per
    channel (opset 21)."""
    x, scale, bias = ctx.input(0), ctx.input(1), ctx.input(2)
    y = ctx.outputs[0]
    groups = ctx.int_attr("num_groups", 0)
    c = ctx.dim(x, 1)
    if c is None or groups <= 0 or c % groups:
        return ctx.freeze_all(f"GroupNormalization '{ctx.name}': channel count unknown")
    res = elementwise(ctx, [x], [y])
    per = c // groups
    v = ctx.virtual("groups")
    res.couple(v, Space(x, 1), block(per))
    for p in (scale, bias):
        if p:
            n = ctx.dim(p, 0)
            target = Space(x, 1) if n == c else v
            res.couple(Space(p, 0), target)
            res.params.append(Param(Space(p, 0), "affine", ctx.index))
    return res


@register("LayerNormalization", opsets=(17, None))
def layer_norm(ctx: NodeContext) -> RuleOutput:
    """Normalises over trailing axes: a lossy coupling on them."""
    return _norm_over_trailing(ctx, ctx.int_attr("axis", -1), "LayerNormalization")


@register("RMSNormalization", opsets=(23, None))
def rms_norm(ctx: NodeContext) -> RuleOutput:
    """Normalises over trailing axes: a lossy coupling on them."""
    return _norm_over_trailing(ctx, ctx.int_attr("axis", -1), "RMSNormalization")


def _norm_over_trailing(ctx: NodeContext, axis: int, what: str) -> RuleOutput:
    x, y = ctx.input(0), ctx.outputs[0]
    r = ctx.rank(x)
    if r is None:
        return ctx.freeze_all(f"{what} '{ctx.name}': input rank unknown")
    axis = axis + r if axis < 0 else axis
    res = elementwise(ctx, [x], [y])
    for p in ctx.inputs[1:3]:
        if not p:
            continue
        rp = ctx.rank(p) or 0
        for pa in range(rp):
            xa = r - rp + pa
            if ctx.view.dim(p, pa) == ctx.view.dim(x, xa) and ctx.view.dim(p, pa) != 1:
                res.couple(Space(p, pa), Space(x, xa))
                res.params.append(Param(Space(p, pa), "affine", ctx.index))
            else:
                res.absorbs.append(Space(p, pa))
    for a in range(axis, r):
        res.lossy.append((Space(x, a), f"{what} '{ctx.name}' normalises over this axis"))
    for extra in ctx.outputs[1:]:  # Mean / InvStdDev: reduced over the normalised axes
        if extra:
            res.absorbs.extend(ctx.all_spaces(extra))
    return res
