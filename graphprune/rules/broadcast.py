"""Broadcasting helpers shared by element-wise rules."""

from __future__ import annotations

from graphprune.rules.registry import IDENTITY, NodeContext, Param, RuleOutput, Space


def couple_broadcast(ctx: NodeContext, res: RuleOutput, src: str, dst: str, *, param_role: str | None = None) -> bool:
    """Couple every axis of ``src`` with the aligned axis of ``dst`` under numpy broadcasting.

    Equal dims couple; a size-1 dim broadcast to a larger one couples nothing (its space is absorbed);
    a dim whose broadcast status cannot be decided freezes that axis.  Returns False if ranks are
    unknown (caller freezes).
    """
    rs, rd = ctx.rank(src), ctx.rank(dst)
    if rs is None or rd is None or rs > rd:
        return False
    shift = rd - rs
    for a in range(rs):
        s_dim = ctx.view.dim(src, a)
        d_dim = ctx.view.dim(dst, a + shift)
        sa, da = Space(src, a), Space(dst, a + shift)
        if s_dim == d_dim and s_dim is not None:
            res.couple(sa, da, IDENTITY)
            if param_role is not None and ctx.is_const(src):
                res.params.append(Param(sa, param_role, ctx.index))  # type: ignore[arg-type]
        elif s_dim == 1:
            res.absorbs.append(sa)
        else:
            res.freezes.append((sa, f"{ctx.op} '{ctx.name}': cannot tell whether axis {a} of '{src}' broadcasts"))
            res.freezes.append((da, f"{ctx.op} '{ctx.name}': cannot tell whether axis {a + shift} broadcasts"))
    return True


def elementwise(ctx: NodeContext, data_inputs: list[str], outputs: list[str]) -> RuleOutput:
    """Rule body for an element-wise op whose data inputs broadcast to each output."""
    res = RuleOutput()
    for out in outputs:
        if not out:
            continue
        for inp in data_inputs:
            if not inp:
                continue
            if not couple_broadcast(ctx, res, inp, out, param_role="const"):
                return ctx.freeze_all(f"{ctx.op} '{ctx.name}': rank of '{inp}' or '{out}' unknown")
    return res
