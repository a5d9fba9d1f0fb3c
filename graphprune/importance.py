"""Group-level channel importance (as in SPA, "Structurally Prune Anything").

Every member of a group is scored unit by unit (a unit's slice of a weight reduced to one number),
the member scores are reduced across the group (``mean``/``sum``/``max``) and the result is
normalised per group so that scores of different groups can be ranked against each other.

A criterion is one function ``(group, ctx) -> np.ndarray[n_units]`` registered by name with
:func:`register_criterion`; :func:`score_groups` runs one over the groups of an analysis.  All
accumulation is in float64.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx
from onnx import helper

from graphprune.analysis import Analysis
from graphprune.errors import GraphpruneError, InternalError, UsageError
from graphprune.graph import GraphView
from graphprune.groups import Group
from graphprune.rules import Param, Space

log = logging.getLogger(__name__)

REDUCTIONS = ("mean", "sum", "max")
NORMALIZERS = ("none", "mean", "max", "standard", "lamp")
ROLES = ("out", "in", "affine", "const")
DEFAULT_ROLES = ("out", "in", "affine")

Feeds = Sequence[Mapping[str, np.ndarray]]


class NotApplicableError(GraphpruneError):
    """A criterion cannot score a group (e.g. ``bn-scale`` on a group without BatchNormalization)."""


class Importance(Protocol):
    """Scores the units of one group: returns a float64 array of shape ``[group.n_units]``."""

    def __call__(self, group: Group, ctx: ScoringContext) -> np.ndarray: ...


_CRITERIA: dict[str, Importance] = {}


def register_criterion(name: str) -> Callable[[Importance], Importance]:
    """Register a criterion under ``name``; a duplicate name fails at import time."""

    def deco(fn: Importance) -> Importance:
        if name in _CRITERIA:
            raise InternalError(f"importance criterion '{name}' registered twice")
        _CRITERIA[name] = fn
        return fn

    return deco


def criteria() -> list[str]:
    """Names of the registered criteria, sorted."""
    return sorted(_CRITERIA)


def get_criterion(name: str) -> Importance:
    try:
        return _CRITERIA[name]
    except KeyError:
        raise UsageError(f"unknown importance criterion '{name}'; choose one of {', '.join(criteria())}") from None


# options and context ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ImportanceOptions:
    """How to score.  ``fallback`` scores groups the criterion cannot (None: raise instead)."""

    criterion: str = "l2"
    reduction: str = "mean"
    normalizer: str = "mean"
    roles: tuple[str, ...] = DEFAULT_ROLES
    seed: int = 0
    fallback: str | None = "l2"

    def __post_init__(self) -> None:
        object.__setattr__(self, "roles", tuple(self.roles))
        _check_choice("reduction", self.reduction, REDUCTIONS)
        _check_choice("normalizer", self.normalizer, NORMALIZERS)
        if not self.roles:
            raise UsageError(f"roles must name at least one of {', '.join(ROLES)}")
        for r in self.roles:
            _check_choice("role", r, ROLES)
        get_criterion(self.criterion)
        if self.fallback is not None:
            get_criterion(self.fallback)


def _check_choice(what: str, value: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise UsageError(f"unknown {what} '{value}'; choose one of {', '.join(allowed)}")


@dataclass
class ScoringContext:
    """What criteria see besides the group: weights, options, calibration data (lazily computed)."""

    view: GraphView
    options: ImportanceOptions
    groups: Sequence[Group] = ()
    feeds: Feeds = ()
    _weights: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _activations: dict[Space, np.ndarray] | None = field(default=None, repr=False)

    def weight(self, tensor: str) -> np.ndarray | None:
        """A constant as float64; small ones are cached (one tensor can be a member of two groups),
        big ones are read again when needed so memory stays bounded on large models."""
        if tensor in self._weights:
            return self._weights[tensor]
        value = self.view.constant_value(tensor)
        if value is None:
            return None
        out = np.asarray(value, dtype=np.float64)
        if out.size <= 1 << 20:
            self._weights[tensor] = out
        return out

    def rng(self, group: Group) -> np.random.Generator:
        """A generator that depends only on the seed and the group id, not on scoring order."""
        return np.random.default_rng([self.options.seed, group.id])

    def activation_means(self, group: Group) -> dict[Space, np.ndarray]:
        """Mean |activation| per channel of the activation members of ``group``.

        The first call measures every group in ``groups`` at once (one session, one pass per feed).
        """
        if self._activations is None:
            self._activations = {}
        missing = set(activation_spaces(group, self.view)) - self._activations.keys()
        if missing:
            everything = {s for g in self.groups for s in activation_spaces(g, self.view)}
            todo = missing | (everything - self._activations.keys())
            self._activations.update(mean_abs_activations(self.view, todo, self.feeds))
        return self._activations


# member helpers ---------------------------------------------------------------------------------
def member_params(group: Group, roles: Iterable[str]) -> list[Param]:
    """Distinct (by space) params of the group whose role is in ``roles``."""
    wanted = set(roles)
    seen: dict[Space, Param] = {}
    for p in group.params:
        if p.role in wanted and p.space not in seen:
            seen[p.space] = p
    return list(seen.values())


def unit_slices(group: Group, space: Space, weight: np.ndarray) -> np.ndarray:
    """``[n_units, features]``: row u holds every element of ``weight`` that unit u owns."""
    idx = group.indices[space]
    taken = np.take(weight, idx.ravel(), axis=space.axis)
    return np.moveaxis(taken, space.axis, 0).reshape(group.n_units, -1)


def activation_spaces(group: Group, view: GraphView) -> list[Space]:
    return [s for s in group.spaces if not s.virtual and not view.is_constant(s.tensor)]


def reduce_members(per_member: Sequence[np.ndarray], how: str) -> np.ndarray:
    """Combine per-member unit scores into one score per unit."""
    stacked = np.stack([np.asarray(m, dtype=np.float64) for m in per_member])
    if how == "mean":
        return np.asarray(stacked.mean(axis=0))
    if how == "sum":
        return np.asarray(stacked.sum(axis=0))
    if how == "max":
        return np.asarray(stacked.max(axis=0))
    raise UsageError(f"unknown reduction '{how}'; choose one of {', '.join(REDUCTIONS)}")


def _magnitude(group: Group, ctx: ScoringContext, per_unit: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    scores = []
    for p in member_params(group, ctx.options.roles):
        w = ctx.weight(p.space.tensor)
        if w is not None:
            scores.append(per_unit(unit_slices(group, p.space, w)))
    if not scores:
        raise NotApplicableError(
            f"group {group.id} has no constant member with role {'/'.join(ctx.options.roles)}"
        )
    return reduce_members(scores, ctx.options.reduction)


# criteria ---------------------------------------------------------------------------------------
@register_criterion("l1")
def l1(group: Group, ctx: ScoringContext) -> np.ndarray:
    """Sum of |w| over each unit's slice of each member."""
    return _magnitude(group, ctx, lambda s: np.abs(s).sum(axis=1))


@register_criterion("l2")
def l2(group: Group, ctx: ScoringContext) -> np.ndarray:
    """L2 norm of each unit's slice of each member."""
    return _magnitude(group, ctx, lambda s: np.sqrt(np.square(s).sum(axis=1)))


@register_criterion("random")
def random(group: Group, ctx: ScoringContext) -> np.ndarray:
    """Uniform [0, 1) scores from ``(seed, group id)``: a baseline."""
    return ctx.rng(group).random(group.n_units)


@register_criterion("fpgm")
def fpgm(group: Group, ctx: ScoringContext) -> np.ndarray:
    """Sum of distances of each unit's producer ("out") slice to all others (He et al. 2019).

    Units near the geometric median are the most replaceable and score lowest.
    """
    scores = []
    for p in member_params(group, ("out",)):
        w = ctx.weight(p.space.tensor)
        if w is not None:
            scores.append(_distance_sums(unit_slices(group, p.space, w)))
    if not scores:
        raise NotApplicableError(f"group {group.id} has no producer (\"out\") weight for fpgm")
    return reduce_members(scores, ctx.options.reduction)


def _distance_sums(x: np.ndarray) -> np.ndarray:
    sq = np.square(x).sum(axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    np.maximum(d2, 0.0, out=d2)
    np.fill_diagonal(d2, 0.0)
    return np.asarray(np.sqrt(d2).sum(axis=1))


@register_criterion("bn-scale")
def bn_scale(group: Group, ctx: ScoringContext) -> np.ndarray:
    """|gamma| of every BatchNormalization in the group (network slimming, Liu et al. 2017)."""
    scores = []
    for p in member_params(group, ("affine",)):
        node = ctx.view.nodes[p.node]
        if node.op_type != "BatchNormalization" or node.input[1] != p.space.tensor:
            continue
        w = ctx.weight(p.space.tensor)
        if w is not None:
            scores.append(np.abs(unit_slices(group, p.space, w)).mean(axis=1))
    if not scores:
        raise NotApplicableError(f"group {group.id} has no BatchNormalization scale for bn-scale")
    return reduce_members(scores, ctx.options.reduction)


@register_criterion("activation")
def activation(group: Group, ctx: ScoringContext) -> np.ndarray:
    """Mean |activation| of each unit's channels over the calibration inputs."""
    means = ctx.activation_means(group)
    scores = [means[s][group.indices[s]].mean(axis=1) for s in activation_spaces(group, ctx.view) if s in means]
    if not scores:
        raise NotApplicableError(f"group {group.id} has no activation tensor to measure")
    return reduce_members(scores, ctx.options.reduction)


# calibration ------------------------------------------------------------------------------------
def mean_abs_activations(view: GraphView, spaces: Iterable[Space], feeds: Feeds) -> dict[Space, np.ndarray]:
    """Run the model once per feed with every needed tensor exposed; mean |x| per channel of each space.

    The mean is over every axis except the channel axis and over all feeds (weighted by elements).
    """
    feeds = list(feeds)
    if not feeds:
        raise UsageError("the activation criterion needs calibration inputs (at least one feed)")
    by_tensor: dict[str, list[Space]] = {}
    for s in sorted(set(spaces)):
        by_tensor.setdefault(s.tensor, []).append(s)
    inputs = set(view.graph_inputs)
    fetch = [t for t in by_tensor if t not in inputs]
    sums: dict[Space, np.ndarray] = {}
    counts: dict[Space, int] = {}
    run = _session(view, fetch) if fetch else None
    for k, feed in enumerate(feeds):
        values = dict(zip(fetch, run(feed), strict=True)) if run else {}
        for t in by_tensor:
            value = values[t] if t in values else feed.get(t)
            if value is None:
                raise UsageError(f"feed {k} has no value for graph input '{t}'")
            for s in by_tensor[t]:
                _accumulate(sums, counts, s, np.asarray(value))
    return {s: sums[s] / counts[s] for s in sums}


def _accumulate(sums: dict[Space, np.ndarray], counts: dict[Space, int], s: Space, value: np.ndarray) -> None:
    if s.axis >= value.ndim:
        raise InternalError(f"activation '{s.tensor}' has rank {value.ndim}, expected axis {s.axis}")
    a = np.abs(value.astype(np.float64, copy=False))
    other = tuple(i for i in range(a.ndim) if i != s.axis)
    total = a.sum(axis=other)
    if s in sums and sums[s].shape != total.shape:
        raise UsageError(f"'{s.tensor}' changes its channel count between feeds")
    sums[s] = sums[s] + total if s in sums else total
    counts[s] = counts.get(s, 0) + (a.size // max(a.shape[s.axis], 1))


def _session(view: GraphView, fetch: list[str]) -> Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]:
    """One ONNX Runtime session over a copy of the model with ``fetch`` added as graph outputs."""
    from graphprune.verify import session

    model = onnx.ModelProto()
    model.CopyFrom(view.model)
    present = {o.name for o in model.graph.output}
    for t in fetch:
        if t in present:
            continue
        elem = view.dtypes.get(t)
        if elem is None:
            raise GraphpruneError(f"cannot expose '{t}' for activation scoring: its element type is unknown")
        model.graph.output.append(helper.make_tensor_value_info(t, elem, None))
    try:
        sess = session(model)
    except Exception as e:
        raise GraphpruneError(f"ONNX Runtime cannot load the model for activation scoring: {e}") from e

    def run(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return [np.asarray(v) for v in sess.run(fetch, dict(feed))]
        except Exception as e:
            raise GraphpruneError(f"ONNX Runtime failed on a calibration input: {e}") from e

    return run


# normalisation ----------------------------------------------------------------------------------
def normalize(scores: np.ndarray, how: str) -> np.ndarray:
    """Per-group normalisation so scores of different groups are comparable.

    ``mean``/``max`` divide by the group's mean/max, ``standard`` is the z-score, ``lamp`` is
    s_u^2 / sum of s_v^2 over units v with s_v >= s_u (Lee et al. 2021).  A zero denominator
    gives zeros.
    """
    s = np.asarray(scores, dtype=np.float64)
    if how == "none":
        return s.copy()
    if how == "mean":
        return _safe_div(s, float(s.mean()) if s.size else 0.0)
    if how == "max":
        return _safe_div(s, float(s.max()) if s.size else 0.0)
    if how == "standard":
        return _safe_div(s - (s.mean() if s.size else 0.0), float(s.std()) if s.size else 0.0)
    if how == "lamp":
        return lamp(s)
    raise UsageError(f"unknown normalizer '{how}'; choose one of {', '.join(NORMALIZERS)}")


def _safe_div(s: np.ndarray, d: float) -> np.ndarray:
    if d == 0.0 or not math.isfinite(d):
        return np.zeros_like(s)
    return s / d


def lamp(scores: np.ndarray) -> np.ndarray:
    """LAMP: s_u^2 / sum_{v: s_v >= s_u} s_v^2 (ties share one denominator)."""
    s = np.asarray(scores, dtype=np.float64)
    sq = np.square(s)
    order = np.argsort(s, kind="stable")
    sorted_s = s[order]
    tail = np.cumsum(sq[order][::-1])[::-1]  # tail[i] = sum of sq over sorted positions >= i
    first = np.searchsorted(sorted_s, s, side="left")  # first position with value >= s_u
    denom = tail[first]
    out = np.zeros_like(s)
    np.divide(sq, denom, out=out, where=denom > 0)
    return out


# driver -----------------------------------------------------------------------------------------
@dataclass
class ImportanceResult:
    """Normalised scores (what allocation ranks), raw scores, and what happened per group."""

    scores: dict[int, np.ndarray]
    raw: dict[int, np.ndarray]
    criterion: dict[int, str]
    warnings: list[str] = field(default_factory=list)


def scorable_groups(analysis: Analysis) -> list[Group]:
    """Groups worth scoring: not frozen and more than one unit (lossy ones included)."""
    return [g for g in analysis.groups if not g.frozen and g.n_units > 1]


def score_groups(
    analysis: Analysis,
    options: ImportanceOptions | None = None,
    *,
    feeds: Feeds = (),
    groups: Sequence[Group] | None = None,
) -> ImportanceResult:
    """Score ``groups`` (default: :func:`scorable_groups`) with ``options.criterion``."""
    options = options or ImportanceOptions()
    todo = list(groups) if groups is not None else scorable_groups(analysis)
    ctx = ScoringContext(view=analysis.view, options=options, groups=todo, feeds=feeds)
    result = ImportanceResult(scores={}, raw={}, criterion={})
    for g in todo:
        raw, used = _score_one(g, ctx, result.warnings)
        result.raw[g.id] = raw
        result.scores[g.id] = normalize(raw, options.normalizer)
        result.criterion[g.id] = used
    return result


def _score_one(group: Group, ctx: ScoringContext, warnings: list[str]) -> tuple[np.ndarray, str]:
    name = ctx.options.criterion
    if group.n_units == 0:  # a frozen region with unknown sizes: nothing to score
        return np.zeros(0), name
    try:
        raw = get_criterion(name)(group, ctx)
    except NotApplicableError as e:
        fb = ctx.options.fallback
        if fb is None or fb == name:
            raise NotApplicableError(f"{e}; pass a fallback criterion to score such groups") from e
        try:
            raw = get_criterion(fb)(group, ctx)
        except NotApplicableError as e2:
            raise NotApplicableError(f"{e}; fallback '{fb}' failed too: {e2}") from e2
        warnings.append(f"group {group.id}: {name} not applicable ({e}); scored with '{fb}' instead")
        log.info(warnings[-1])
        name = fb
    raw = np.asarray(raw, dtype=np.float64)
    if raw.shape != (group.n_units,) or not np.all(np.isfinite(raw)):
        raise InternalError(f"criterion '{name}' returned {raw.shape} / non-finite scores for group {group.id}")
    return raw, name
