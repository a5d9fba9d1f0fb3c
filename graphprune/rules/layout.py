"""Axis permutations and insertions: Transpose, Squeeze, Unsqueeze, Expand, Tile."""

from __future__ import annotations

import numpy as np

from graphprune.rules.broadcast import couple_broadcast
from graphprune.rules.registry import NodeContext, RuleOutput, Space, register


def axes_of(ctx: NodeContext, attr_name: str = "axes", input_index: int = 1) -> list[int] | None:
    """Axes from the attribute (old opsets) or the constant input (new opsets); None if dynamic."""
    v = ctx.ints_attr(attr_name)
    if v is not None:
        return v
    name = ctx.input(input_index)
    if not name:
        return []
    c = ctx.const(name)
    return None if c is None else [int(a) for a in np.asarray(c).ravel()]


@register("Transpose")
def transpose(ctx: NodeContext) -> RuleOutput:
    """Output axis i is input axis perm[i]."""
    x, y = ctx.input(0), ctx.outputs[0]
    r = ctx.rank(x)
    if r is None:
        return ctx.freeze_all(f"Transpose '{ctx.name}': rank unknown")
    perm = ctx.ints_attr("perm") or list(reversed(range(r)))
    res = RuleOutput()
    for i, p in enumerate(perm):
        res.couple(Space(x, p), Space(y, i))
    return res


@register("Squeeze")
def squeeze(ctx: NodeContext) -> RuleOutput:
    """Removed size-1 axes are absorbed; the others map in order."""
    x, y = ctx.input(0), ctx.outputs[0]
    r = ctx.rank(x)
    axes = axes_of(ctx)
    if r is None or axes is None:
        return ctx.freeze_all(f"Squeeze '{ctx.name}': rank or axes unknown")
    if not axes:
        axes = [a for a in range(r) if ctx.view.dim(x, a) == 1]
    removed = {a + r if a < 0 else a for a in axes}
    res = RuleOutput()
    res.absorbs.extend(ctx.all_spaces(ctx.input(1)))
    k = 0
    for a in range(r):
        if a in removed:
            res.absorbs.append(Space(x, a))
        else:
            res.couple(Space(x, a), Space(y, k))
            k += 1
    return res


@register("Unsqueeze")
def unsqueeze(ctx: NodeContext) -> RuleOutput:
    """Inserted axes are new; the others map in order."""
    x, y = ctx.input(0), ctx.outputs[0]
    ry = ctx.rank(y)
    axes = axes_of(ctx)
    if ry is None or axes is None:
        return ctx.freeze_all(f"Unsqueeze '{ctx.name}': rank or axes unknown")
    added = {a + ry if a < 0 else a for a in axes}
    res = RuleOutput()
    res.absorbs.extend(ctx.all_spaces(ctx.input(1)))
    k = 0
    for a in range(ry):
        if a in added:
            res.absorbs.append(Space(y, a))
        else:
            res.couple(Space(x, k), Space(y, a))
            k += 1
    return res


@register("Expand")
def expand(ctx: NodeContext) -> RuleOutput:
    """Broadcast to a shape: equal dims couple; the shape constant is rewritten by the passes."""
    res = RuleOutput()
    res.absorbs.extend(ctx.all_spaces(ctx.input(1)))
    if not couple_broadcast(ctx, res, ctx.input(0), ctx.outputs[0]):
        return ctx.freeze_all(f"Expand '{ctx.name}': ranks unknown")
    return res


@register("Tile")
def tile(ctx: NodeContext) -> RuleOutput:
    """Axes repeated once pass through; repeated axes freeze."""
    x, y = ctx.input(0), ctx.outputs[0]
    reps = ctx.const(ctx.input(1))
    r = ctx.rank(x)
    if reps is None or r is None:
        return ctx.freeze_all(f"Tile '{ctx.name}': repeats not constant")
    res = RuleOutput()
    res.absorbs.extend(ctx.all_spaces(ctx.input(1)))
    for a, rep in enumerate(np.asarray(reps).ravel().tolist()):
        if rep == 1:
            res.couple(Space(x, a), Space(y, a))
        else:
            reason = f"Tile '{ctx.name}' repeats axis {a}"
            res.freezes += [(Space(x, a), reason), (Space(y, a), reason)]
    return res
