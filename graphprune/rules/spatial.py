"""Ops that work per channel over spatial axes: pooling, Resize/Upsample, Pad, DepthToSpace guards."""

from __future__ import annotations

import numpy as np

from graphprune.rules.registry import NodeContext, RuleOutput, Space, register

POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")


@register(*POOLS)
def pool(ctx: NodeContext) -> RuleOutput:
    """Channels pass through; spatial axes are absorbed; the Indices output freezes."""
    x, y = ctx.input(0), ctx.outputs[0]
    r = ctx.rank(x)
    if r is None:
        return ctx.freeze_all(f"{ctx.op} '{ctx.name}': rank unknown")
    res = RuleOutput()
    res.couple(Space(x, 0), Space(y, 0))
    res.couple(Space(x, 1), Space(y, 1))
    for a in range(2, r):
        res.absorbs += [Space(x, a), Space(y, a)]
    if len(ctx.outputs) > 1 and ctx.outputs[1]:
        res.freezes.append((ctx.outputs[1], f"{ctx.op} '{ctx.name}': Indices output encodes channel positions"))
    return res


def _per_axis_scale(ctx: NodeContext, x: str, y: str) -> RuleOutput:
    r = ctx.rank(x)
    if r is None or ctx.rank(y) != r:
        return ctx.freeze_all(f"{ctx.op} '{ctx.name}': rank unknown")
    res = RuleOutput()
    for extra in ctx.inputs[1:]:
        if extra:
            res.absorbs.extend(ctx.all_spaces(extra))
    for a in range(r):
        dx, dy = ctx.view.dim(x, a), ctx.view.dim(y, a)
        if dx is not None and dx == dy:
            res.couple(Space(x, a), Space(y, a))
        else:
            res.absorbs += [Space(x, a), Space(y, a)] if not ctx.is_live(Space(x, a)) else []
            if ctx.is_live(Space(x, a)) or ctx.is_live(Space(y, a)):
                reason = f"{ctx.op} '{ctx.name}' resizes axis {a}"
                res.freezes += [(Space(x, a), reason), (Space(y, a), reason)]
    return res


@register("Resize", "Upsample")
def resize(ctx: NodeContext) -> RuleOutput:
    """Resizing spatial axes keeps channels; axes whose size is unchanged couple one to one."""
    return _per_axis_scale(ctx, ctx.input(0), ctx.outputs[0])


@register("Pad", opsets=(11, None))
def pad(ctx: NodeContext) -> RuleOutput:
    """Unpadded axes pass through; padding a channel axis freezes it."""
    x, y = ctx.input(0), ctx.outputs[0]
    r = ctx.rank(x)
    pads = ctx.const(ctx.input(1))
    axes = ctx.const(ctx.input(3)) if ctx.input(3) else None
    if r is None or pads is None:
        return ctx.freeze_all(f"Pad '{ctx.name}': pads not constant")
    pads = np.asarray(pads).ravel()
    ax = list(range(r)) if axes is None else [int(a) + r if a < 0 else int(a) for a in np.asarray(axes).ravel()]
    padded = {a for k, a in enumerate(ax) if pads[k] != 0 or pads[k + len(ax)] != 0}
    res = RuleOutput()
    for extra in ctx.inputs[1:]:
        if extra:
            res.absorbs.extend(ctx.all_spaces(extra))
    for a in range(r):
        if a in padded:
            if ctx.is_live(Space(x, a)) or ctx.is_live(Space(y, a)):
                reason = f"Pad '{ctx.name}' pads axis {a}"
                res.freezes += [(Space(x, a), reason), (Space(y, a), reason)]
            else:
                res.absorbs += [Space(x, a), Space(y, a)]
        else:
            res.couple(Space(x, a), Space(y, a))
    return res
