"""Gemm and MatMul (with a constant operand, or between two activations as in attention)."""

from __future__ import annotations

from graphprune.rules.broadcast import couple_broadcast
from graphprune.rules.registry import NodeContext, Param, RuleOutput, Space, register


@register("Gemm")
def gemm(ctx: NodeContext) -> RuleOutput:
    """Y[M,N] = A'[M,K] B'[K,N] + C, with A' = A^T if transA and B' = B^T if transB."""
    a, b, c = ctx.input(0), ctx.input(1), ctx.input(2)
    y = ctx.outputs[0]
    ta, tb = ctx.int_attr("transA", 0), ctx.int_attr("transB", 0)
    if ctx.rank(a) != 2 or ctx.rank(b) != 2:
        return ctx.freeze_all(f"Gemm '{ctx.name}': operand ranks unknown")
    a_m, a_k = Space(a, 1 if ta else 0), Space(a, 0 if ta else 1)
    b_k, b_n = Space(b, 1 if tb else 0), Space(b, 0 if tb else 1)
    res = RuleOutput()
    res.couple(a_m, Space(y, 0))
    res.couple(a_k, b_k)
    res.couple(b_n, Space(y, 1))
    if ctx.is_const(b):
        res.params += [Param(b_k, "in", ctx.index), Param(b_n, "out", ctx.index)]
    if ctx.is_const(a):
        res.params += [Param(a_k, "in", ctx.index), Param(a_m, "out", ctx.index)]
    if c:
        if not couple_broadcast(ctx, res, c, y, param_role="out"):
            return ctx.freeze_all(f"Gemm '{ctx.name}': bias rank unknown")
    return res


@register("MatMul")
def matmul(ctx: NodeContext) -> RuleOutput:
    """numpy matmul: contraction axis of A ties to B's; batch dims broadcast."""
    a, b = ctx.input(0), ctx.input(1)
    y = ctx.outputs[0]
    ra, rb, ry = ctx.rank(a), ctx.rank(b), ctx.rank(y)
    if ra is None or rb is None or ry is None:
        return ctx.freeze_all(f"MatMul '{ctx.name}': operand ranks unknown")
    res = RuleOutput()
    a_k = Space(a, ra - 1)
    b_k = Space(b, rb - 2 if rb >= 2 else 0)
    res.couple(a_k, b_k)
    if ra >= 2:
        res.couple(Space(a, ra - 2), Space(y, ry - (2 if rb >= 2 else 1)))
    if rb >= 2:
        res.couple(Space(b, rb - 1), Space(y, ry - 1))
    # batch dims broadcast like element-wise ops
    nb_y = ry - (ra >= 2) - (rb >= 2)
    for src, r in ((a, ra), (b, rb)):
        nb = r - 2
        for i in range(max(nb, 0)):
            ya = nb_y - nb + i
            sd, yd = ctx.view.dim(src, i), ctx.view.dim(y, ya)
            if sd == yd and sd is not None:
                res.couple(Space(src, i), Space(y, ya))
            elif sd == 1:
                res.absorbs.append(Space(src, i))
            else:
                res.freezes.append((Space(src, i), f"MatMul '{ctx.name}': batch broadcast of '{src}' unclear"))
    if not ctx.is_const(a) and not ctx.is_const(b) and ra >= 3 and rb >= 3:
        # attention (scores = q @ k^T, context = p @ v): batch axes after the first are heads
        res.tags += [(Space(a, k), "heads") for k in range(1, ra - 2)]
        res.tags += [(Space(b, k), "heads") for k in range(1, rb - 2)]
        # the contraction of q @ k^T and the value axis of p @ v (the other cases are token axes,
        # which never carry weights)
        res.tags += [(a_k, "head-dim"), (Space(b, rb - 1), "head-dim")]
    if ctx.is_const(b):
        res.params.append(Param(b_k, "in", ctx.index))
        if rb >= 2:
            res.params.append(Param(Space(b, rb - 1), "out", ctx.index))
    if ctx.is_const(a):
        res.params.append(Param(a_k, "in", ctx.index))
        if ra >= 2:
            res.params.append(Param(Space(a, ra - 2), "out", ctx.index))
    return res
