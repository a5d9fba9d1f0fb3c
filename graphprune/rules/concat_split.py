"""Concat, Split and Slice along any axis (offset maps), Gather on a weight table."""

from __future__ import annotations

import numpy as np

from graphprune.rules.registry import NodeContext, Param, RuleOutput, Space, offset, register


def _identity_except(ctx: NodeContext, res: RuleOutput, x: str, y: str, axis: int) -> None:
    for a in range(ctx.rank(x) or 0):
        if a != axis:
            res.couple(Space(x, a), Space(y, a))


@register("Concat")
def concat(ctx: NodeContext) -> RuleOutput:
    """Input i's channels sit at an offset of the output axis; other axes pass through."""
    y = ctx.outputs[0]
    r = ctx.rank(y)
    if r is None:
        return ctx.freeze_all(f"Concat '{ctx.name}': rank unknown")
    axis = ctx.int_attr("axis", 0)
    axis = axis + r if axis < 0 else axis
    res = RuleOutput()
    off = 0
    sizes = [ctx.dim(x, axis) for x in ctx.inputs]
    for x, n in zip(ctx.inputs, sizes, strict=True):
        _identity_except(ctx, res, x, y, axis)
        if None in sizes:
            res.freezes.append((Space(x, axis), f"Concat '{ctx.name}': size of '{x}' on axis {axis} unknown"))
        elif n:
            res.couple(Space(x, axis), Space(y, axis), offset(off))
        off += n or 0
    if None in sizes:
        res.freezes.append((Space(y, axis), f"Concat '{ctx.name}': input sizes on axis {axis} unknown"))
    return res


@register("Split")
def split(ctx: NodeContext) -> RuleOutput:
    """Output j holds an offset block of the input axis (attribute, input and num_outputs forms)."""
    x = ctx.input(0)
    r = ctx.rank(x)
    if r is None:
        return ctx.freeze_all(f"Split '{ctx.name}': rank unknown")
    axis = ctx.int_attr("axis", 0)
    axis = axis + r if axis < 0 else axis
    res = RuleOutput()
    res.absorbs.extend(ctx.all_spaces(ctx.input(1)))
    off = 0
    for y in ctx.outputs:
        n = ctx.dim(y, axis)
        if n is None:
            return ctx.freeze_all(f"Split '{ctx.name}': size of output '{y}' unknown")
        _identity_except(ctx, res, x, y, axis)
        if n:
            res.couple(Space(y, axis), Space(x, axis), offset(off))
        off += n
    return res


@register("Slice", opsets=(10, None))
def slice_(ctx: NodeContext) -> RuleOutput:
    """Constant bounds with step 1: output channel i is input channel start+i (offset map); other steps freeze."""
    x, y = ctx.input(0), ctx.outputs[0]
    r = ctx.rank(x)
    starts, ends = ctx.const(ctx.input(1)), ctx.const(ctx.input(2))
    axes = ctx.const(ctx.input(3)) if ctx.input(3) else np.arange(len(np.atleast_1d(starts if starts is not None else [])))
    steps = ctx.const(ctx.input(4)) if ctx.input(4) else None
    if r is not None and axes is not None and (starts is None or ends is None or (ctx.input(4) and steps is None)):
        return _dynamic_slice(ctx, x, y, r, axes)
    if r is None or starts is None or ends is None or axes is None or (ctx.input(4) and steps is None):
        return ctx.freeze_all(f"Slice '{ctx.name}': rank or slice bounds not constant")
    res = RuleOutput()
    for extra in ctx.inputs[1:]:
        if extra:
            res.absorbs.extend(ctx.all_spaces(extra))
    sliced: dict[int, tuple[int, int, int]] = {}
    st = np.ones(len(np.atleast_1d(axes)), dtype=np.int64) if steps is None else np.atleast_1d(steps)
    for a, s, e, k in zip(np.atleast_1d(axes), np.atleast_1d(starts), np.atleast_1d(ends), st, strict=False):
        a = int(a) + r if a < 0 else int(a)
        sliced[a] = (int(s), int(e), int(k))
    for a in range(r):
        if a not in sliced:
            res.couple(Space(x, a), Space(y, a))
            continue
        n = ctx.dim(x, a)
        m = ctx.dim(y, a)
        if n is None or m is None:
            reason = f"Slice '{ctx.name}': size of axis {a} unknown"
            res.freezes += [(Space(x, a), reason), (Space(y, a), reason)]
            continue
        idx = np.arange(n)[slice(*sliced[a])]
        if len(idx) != m:
            reason = f"Slice '{ctx.name}': bounds do not match inferred shape"
            res.freezes += [(Space(x, a), reason), (Space(y, a), reason)]
        elif m == 0:
            res.absorbs += [Space(x, a), Space(y, a)]
        elif sliced[a][2] == 1:
            res.couple(Space(y, a), Space(x, a), offset(int(idx[0])))
        else:
            reason = f"Slice '{ctx.name}' uses step {sliced[a][2]} on axis {a}"
            res.freezes += [(Space(x, a), reason), (Space(y, a), reason)]
    return res


def _dynamic_slice(ctx: NodeContext, x: str, y: str, r: int, axes: np.ndarray) -> RuleOutput:
    """Bounds computed at run time: the sliced axes freeze, the others pass through."""
    res = RuleOutput()
    for extra in ctx.inputs[1:]:
        if extra:
            res.absorbs.extend(ctx.all_spaces(extra))
    sliced = {int(a) + r if a < 0 else int(a) for a in np.atleast_1d(axes)}
    for a in range(r):
        if a in sliced:
            reason = f"Slice '{ctx.name}': bounds on axis {a} are computed at run time"
            res.freezes += [(Space(x, a), reason), (Space(y, a), reason)]
        else:
            res.couple(Space(x, a), Space(y, a))
    return res


@register("Gather")
def gather(ctx: NodeContext) -> RuleOutput:
    """Other axes of the data pass through; the gathered axis is absorbed (a lookup), and frozen if it
    carries channels (the indices would name pruned channels)."""
    data, idx, y = ctx.input(0), ctx.input(1), ctx.outputs[0]
    r, ri = ctx.rank(data), ctx.rank(idx)
    if r is None or ri is None:
        return ctx.freeze_all(f"Gather '{ctx.name}': ranks unknown")
    axis = ctx.int_attr("axis", 0)
    axis = axis + r if axis < 0 else axis
    res = RuleOutput()
    for a in range(r):
        if a < axis:
            res.couple(Space(data, a), Space(y, a))
        elif a > axis:
            res.couple(Space(data, a), Space(y, a + ri - 1))
            if ctx.is_const(data):
                res.params.append(Param(Space(data, a), "out", ctx.index))
        elif ctx.is_live(Space(data, a)) and not ctx.is_const(data):
            res.freezes.append((Space(data, a), f"Gather '{ctx.name}' indexes channels on axis {a}"))
        else:
            res.absorbs.append(Space(data, a))
    for a in range(ri):
        res.couple(Space(idx, a), Space(y, axis + a))
    return res
