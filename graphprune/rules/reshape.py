"""Reshape and Flatten: channels become blocks (or strides) of the merged axis, and a split axis
keeps its channels on one of its factors (whole heads by default, or the head dimension).

Dims are aligned into segments of equal product.  Within a segment that merges k>1 axes into one,
the one live factor couples (factor map); within one that splits an axis into m>1 factors, the live
factor couples, or, if only the source is live, the factor the analysis options prefer.  Two live
factors in one segment would mix two channel spaces: they are frozen.
"""

from __future__ import annotations

import math

import numpy as np

from graphprune.graph import Dim
from graphprune.rules.registry import NodeContext, RuleOutput, Space, register, tiled

Segment = tuple[list[int], list[int]]


def align(ins: list[Dim], outs: list[Dim]) -> list[Segment] | None:
    """Group axes of ``ins`` and ``outs`` into segments with equal products (symbols must match)."""
    segs: list[Segment] = []
    i = j = 0
    while i < len(ins) or j < len(outs):
        if i < len(ins) and j < len(outs) and isinstance(ins[i], str) and ins[i] == outs[j]:
            segs.append(([i], [j]))
            i += 1
            j += 1
            continue
        if i < len(ins) and ins[i] == 1:
            segs.append(([i], []))
            i += 1
            continue
        if j < len(outs) and outs[j] == 1:
            segs.append(([], [j]))
            j += 1
            continue
        si: list[int] = []
        so: list[int] = []
        pi = po = 1
        while True:
            if si and so and pi == po:
                break
            if pi <= po and i < len(ins):
                d = ins[i]
                if not isinstance(d, int):
                    return None
                pi *= d
                si.append(i)
                i += 1
            elif j < len(outs):
                d = outs[j]
                if not isinstance(d, int):
                    return None
                po *= d
                so.append(j)
                j += 1
            else:
                return None
        segs.append((si, so))
    return segs


def _fill_one_unknown(ins: list[Dim], outs: list[Dim]) -> list[Dim]:
    """Resolve one output dim that inference left unknown (None or a fresh 'unk__' symbol)."""
    odd = [k for k, d in enumerate(outs) if d is None or (isinstance(d, str) and d not in ins)]
    if len(odd) != 1:
        return outs
    syms_in = sorted(d for d in ins if isinstance(d, str))
    syms_out = sorted(d for k, d in enumerate(outs) if isinstance(d, str) and k != odd[0])
    p_in = math.prod(d for d in ins if isinstance(d, int))
    p_out = math.prod(d for k, d in enumerate(outs) if isinstance(d, int))
    if None in ins or not p_out:
        return outs
    outs = list(outs)
    if syms_in == syms_out and p_in % p_out == 0:
        outs[odd[0]] = p_in // p_out
    else:
        # one input symbol the output lost (inference named the -1 dim afresh): the same dim
        extra = [d for d in syms_in if d not in syms_out]
        if len(extra) == 1 and sorted(syms_out + extra) == syms_in and p_in == p_out:
            outs[odd[0]] = extra[0]
    return outs


def resolve_target(ctx: NodeContext, x: str, y: str) -> list[Dim] | None:
    out = ctx.shape(y)
    ins = ctx.shape(x)
    if out is not None and ins is not None:
        out = tuple(_fill_one_unknown(list(ins), list(out)))
    if out is not None and all(d is not None for d in out):
        return list(out)
    if ctx.op == "Flatten":
        if ins is None:
            return None
        axis = ctx.int_attr("axis", 1)
        axis = axis + len(ins) if axis < 0 else axis
        return [_product(list(ins[:axis])), _product(list(ins[axis:]))]
    target = ctx.const(ctx.input(1))
    if target is None or ins is None:
        return None
    dims: list[Dim] = []
    for k, t in enumerate(np.asarray(target).ravel().tolist()):
        if t == 0 and not ctx.int_attr("allowzero", 0):
            dims.append(ins[k] if k < len(ins) else None)
        else:
            dims.append(int(t) if t != -1 else None)
    if dims.count(None) == 1:
        known = math.prod(int(d) for d in dims if isinstance(d, int))
        total = math.prod(int(d) for d in ins if isinstance(d, int))
        syms_in = [d for d in ins if not isinstance(d, int)]
        syms_out = [d for d in dims if isinstance(d, str)]
        if not syms_in and known:
            dims[dims.index(None)] = total // known
        elif len(syms_in) == 1 and isinstance(syms_in[0], str) and not syms_out and known == total:
            dims[dims.index(None)] = syms_in[0]
    return dims


def _product(dims: list[Dim]) -> Dim:
    if all(isinstance(d, int) for d in dims):
        return math.prod(d for d in dims if isinstance(d, int))
    non_one = [d for d in dims if d != 1]
    return non_one[0] if len(non_one) == 1 else None


def reshape_rule(ctx: NodeContext, x: str, y: str) -> RuleOutput:
    ins = ctx.shape(x)
    outs = resolve_target(ctx, x, y)
    if ins is None or outs is None:
        return ctx.freeze_all(f"{ctx.op} '{ctx.name}': input or output shape unknown")
    segs = align(list(ins), outs)
    if segs is None:
        return ctx.freeze_all(f"{ctx.op} '{ctx.name}': cannot align shapes {list(ins)} -> {outs}")
    res = RuleOutput()
    for extra in ctx.inputs[1:]:
        if extra:
            res.absorbs.extend(ctx.all_spaces(extra))
    for si, so in segs:
        if not si or not so:
            res.absorbs.extend(Space(x, a) for a in si)
            res.absorbs.extend(Space(y, a) for a in so)
            continue
        if len(si) == 1 and len(so) == 1:
            res.couple(Space(x, si[0]), Space(y, so[0]))
            continue
        if len(si) > 1 and len(so) > 1:
            for a in si:
                res.freezes.append((Space(x, a), f"{ctx.op} '{ctx.name}' regroups axes {si}->{so}"))
            for a in so:
                res.freezes.append((Space(y, a), f"{ctx.op} '{ctx.name}' regroups axes {si}->{so}"))
            continue
        many, one, many_t, one_t = (si, so[0], x, y) if len(si) > 1 else (so, si[0], y, x)
        resolved = list(ins) if many_t == x else outs
        if not all(isinstance(resolved[a], int) for a in many):
            for a in many:
                res.freezes.append((Space(many_t, a), f"{ctx.op} '{ctx.name}': sizes of merged axes unknown"))
            res.freezes.append((Space(one_t, one), f"{ctx.op} '{ctx.name}': sizes of merged axes unknown"))
            continue
        dims = [int(resolved[a]) for a in many]  # type: ignore[arg-type]
        live = [k for k, a in enumerate(many) if ctx.is_live(Space(many_t, a))]
        if len(live) > 1:
            for k in live:
                res.freezes.append((Space(many_t, many[k]), f"{ctx.op} '{ctx.name}' mixes two live axes"))
            res.freezes.append((Space(one_t, one), f"{ctx.op} '{ctx.name}' mixes two live axes"))
            continue
        if live:
            pick = live[0]
        elif not ctx.defaults_allowed:
            res.absorbs.extend(Space(many_t, a) for a in many)
            res.absorbs.append(Space(one_t, one))
            continue
        elif len(si) > 1:
            # a merge of axes none of which carries channels (e.g. H x W of a 1-channel map): the
            # merged axis cannot lose features without a matching input channel
            res.absorbs.extend(Space(many_t, a) for a in many)
            res.freezes.append((Space(one_t, one), f"{ctx.op} '{ctx.name}' merges axes {many} that carry no channels"))
            continue
        elif ctx.options.split_preference == "heads":
            pick = max(len(many) - 2, 0)  # [..., heads, head_dim]: the factor before the last
        else:
            pick = len(many) - 1
        outer = math.prod(dims[:pick])
        inner = math.prod(dims[pick + 1:])
        res.couple(Space(many_t, many[pick]), Space(one_t, one), tiled(outer, inner))
        res.absorbs.extend(Space(many_t, a) for k, a in enumerate(many) if k != pick)
    return res


@register("Reshape")
def reshape(ctx: NodeContext) -> RuleOutput:
    """Merged axes become blocks (or strides) of one axis; a split axis keeps its channels on one factor (whole heads by default)."""
    return reshape_rule(ctx, ctx.input(0), ctx.outputs[0])


@register("Flatten")
def flatten(ctx: NodeContext) -> RuleOutput:
    """A Reshape to 2-D: channel c becomes a block of H*W features."""
    return reshape_rule(ctx, ctx.input(0), ctx.outputs[0])
