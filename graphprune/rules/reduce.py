"""Reductions and Softmax.  Over non-channel axes they pass channels through; over a channel axis
they are lossy couplings (the result depends on which channels remain)."""

from __future__ import annotations

from graphprune.rules.layout import axes_of
from graphprune.rules.registry import NodeContext, RuleOutput, Space, register

REDUCE = (
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
)


@register(*REDUCE)
def reduce(ctx: NodeContext) -> RuleOutput:
    """Reduced axes are absorbed and lossy; the others pass through."""
    x, y = ctx.input(0), ctx.outputs[0]
    r = ctx.rank(x)
    axes = axes_of(ctx)
    if r is None or axes is None:
        return ctx.freeze_all(f"{ctx.op} '{ctx.name}': rank or axes unknown")
    keep = ctx.int_attr("keepdims", 1)
    if not axes and not ctx.int_attr("noop_with_empty_axes", 0):
        axes = list(range(r))
    reduced = {a + r if a < 0 else a for a in axes}
    res = RuleOutput()
    res.absorbs.extend(ctx.all_spaces(ctx.input(1)))
    k = 0
    for a in range(r):
        if a in reduced:
            res.absorbs.append(Space(x, a))
            res.lossy.append((Space(x, a), f"{ctx.op} '{ctx.name}' reduces over this axis"))
            if keep:
                res.absorbs.append(Space(y, k))
                k += 1
        else:
            res.couple(Space(x, a), Space(y, k))
            k += 1
    return res


@register("Softmax", "LogSoftmax", "Hardmax")
def softmax(ctx: NodeContext) -> RuleOutput:
    """Normalises over its axis: a lossy coupling there."""
    x, y = ctx.input(0), ctx.outputs[0]
    r = ctx.rank(x)
    if r is None:
        return ctx.freeze_all(f"{ctx.op} '{ctx.name}': rank unknown")
    opset = ctx.view.opset_for("")
    axis = ctx.int_attr("axis", -1 if opset >= 13 else 1)
    axis = axis + r if axis < 0 else axis
    over = [axis] if opset >= 13 else list(range(axis, r))  # old opsets flatten trailing axes
    res = RuleOutput()
    for a in range(r):
        res.couple(Space(x, a), Space(y, a))
        if a in over:
            res.lossy.append((Space(x, a), f"{ctx.op} '{ctx.name}' normalises over this axis"))
    return res


@register("ArgMax", "ArgMin")
def argmax(ctx: NodeContext) -> RuleOutput:
    """Returns indices along its axis: that axis freezes."""
    x, y = ctx.input(0), ctx.outputs[0]
    r = ctx.rank(x)
    if r is None:
        return ctx.freeze_all(f"{ctx.op} '{ctx.name}': rank unknown")
    axis = ctx.int_attr("axis", 0)
    axis = axis + r if axis < 0 else axis
    keep = ctx.int_attr("keepdims", 1)
    res = RuleOutput()
    k = 0
    for a in range(r):
        if a == axis:
            res.freezes.append((Space(x, a), f"{ctx.op} '{ctx.name}' returns channel indices"))
            if keep:
                res.absorbs.append(Space(y, k))
                k += 1
        else:
            res.couple(Space(x, a), Space(y, k))
            k += 1
    return res
