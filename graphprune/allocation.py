"""Allocation: how many units each group loses, and which ones.

* **local** (default): every eligible group loses ``floor(R * n_units)`` units (with a 1e-9
  tolerance, so 0.3 of 10 is 3 and 0.29 of 100 is 29), its lowest-scoring ones.
* **global ranking**: the scores of all eligible groups are ranked together (pass normalised scores)
  and the lowest units go until their cost weight (the parameters they remove; channels for groups
  without weights) reaches R of the total.
* **targets**: the ratio of either mode is searched (bisection) until the estimated MACs or
  parameters reach a fraction F of the dense model, or until a latency model (a measured per-layer
  table, :mod:`graphprune.latency_table`) predicts ``target_latency_ms`` or less.

Every group keeps at least one unit and loses at most ``floor(max_ratio * n_units)``.  With
``round_to`` N, the kept count is rounded *up* to a multiple of N (never more removed than asked,
never fewer than N kept); a group where no such multiple lies below ``n_units`` keeps all units, and
groups smaller than N are left alone unless ``round_small`` (then they are pruned without rounding).
``round_to="auto"`` lets the latency model round each group's kept count up to the step edge its
measured table shows (it never removes more than asked either).
Ties are broken by unit index (lower index goes first), so the same inputs give the same result.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Protocol

import numpy as np
import onnx

from graphprune.analysis import Analysis
from graphprune.cost import mac_axes
from graphprune.errors import UsageError
from graphprune.graph import GraphView
from graphprune.groups import Group
from graphprune.rules import Space

log = logging.getLogger(__name__)

_EPS = 1e-9
_SEARCH_STEPS = 60
_LATENCY_SEARCH_STEPS = 30  # 1e-9 of the ratio: far below one channel, and each step runs the table
_FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
)  # what graphprune.cost counts as parameters


class TargetUnreachableError(UsageError):
    """A MACs/params/latency target cannot be met under the given limits."""


class LatencyCost(Protocol):
    """Predicted latency of the model after removing channels (see :mod:`graphprune.latency_table`)."""

    def predict(self, removed: Mapping[Space, int]) -> float:
        """Milliseconds with ``removed[space]`` channels gone from each space."""
        ...

    def round_counts(self, counts: Mapping[int, int], cost: CostModel) -> dict[int, int]:
        """``round_to="auto"``: units each group loses after moving its kept count up to a step edge
        (never more than ``counts[gid]``)."""
        ...


# options ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AllocationOptions:
    """What to remove.  Invalid values raise :class:`UsageError` at construction."""

    ratio: float = 0.0
    global_ranking: bool = False
    max_ratio: float = 0.9
    target_macs: float | None = None
    target_params: float | None = None
    round_to: int | str = 1  # or "auto" (needs ``latency``)
    round_small: bool = False
    ignore: tuple[str, ...] = ()
    ratio_for: tuple[tuple[str, float], ...] = ()
    kind_ratios: tuple[tuple[str, float], ...] = ()  # e.g. (("heads", 0.25),): ratio per group kind
    allow_lossy: bool = False
    target_latency_ms: float | None = None
    latency: LatencyCost | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ignore", tuple(self.ignore))
        object.__setattr__(self, "ratio_for", tuple((str(p), r) for p, r in self.ratio_for))
        _check_ratio("ratio", self.ratio)
        for pattern, r in self.ratio_for:
            _check_ratio(f"ratio for '{pattern}'", r)
        object.__setattr__(self, "kind_ratios", tuple((str(k), r) for k, r in self.kind_ratios))
        for kind, r in self.kind_ratios:
            _check_ratio(f"ratio for {kind}", r)
        if not _is_number(self.max_ratio) or not 0.0 <= self.max_ratio <= 1.0:
            raise UsageError(f"max_ratio must be in [0, 1], got {self.max_ratio!r}")
        for name in ("target_macs", "target_params"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or not 0.0 < value <= 1.0):
                raise UsageError(f"{name} must be a fraction of the dense model in (0, 1], got {value!r}")
        if sum(x is not None for x in (self.target_macs, self.target_params, self.target_latency_ms)) > 1:
            raise UsageError("give one of target_macs, target_params and target_latency_ms")
        if self.target_latency_ms is not None and (not _is_number(self.target_latency_ms)
                                                   or self.target_latency_ms <= 0):
            raise UsageError(f"target_latency_ms must be a positive number, got {self.target_latency_ms!r}")
        if (self.target_latency_ms is not None or self.round_to == "auto") and self.latency is None:
            raise UsageError("a latency target and round_to='auto' need a latency model (a measured table: "
                             "graphprune calibrate-latency)")
        if self.target is not None and self.ratio != 0.0:
            raise UsageError("give a ratio or a target (the target search chooses the ratio), not both")
        if self.round_to != "auto" and (isinstance(self.round_to, bool) or not isinstance(self.round_to, int)
                                        or self.round_to < 1):
            raise UsageError(f"round_to must be an integer >= 1 or 'auto', got {self.round_to!r}")

    @property
    def target(self) -> tuple[str, float] | None:
        """("macs" | "params", fraction) or ("latency", milliseconds) when a target is set."""
        if self.target_macs is not None:
            return "macs", float(self.target_macs)
        if self.target_params is not None:
            return "params", float(self.target_params)
        if self.target_latency_ms is not None:
            return "latency", float(self.target_latency_ms)
        return None

    @property
    def fixed_round_to(self) -> int:
        """The integer multiple (1 under ``round_to="auto"``, whose rounding the latency model does)."""
        return self.round_to if isinstance(self.round_to, int) else 1


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _check_ratio(what: str, r: float) -> None:
    if not _is_number(r) or not 0.0 <= r < 1.0:
        raise UsageError(f"{what} must be a fraction in [0, 1), got {r!r}")


# results ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupDecision:
    """What allocation did with one group.

    ``ratio`` is the ratio asked of it (the local ratio, its ``ratio_for`` override, or the global
    budget fraction under global ranking); ``skipped`` says why it kept every unit.
    """

    group_id: int
    units_before: int
    units_after: int
    ratio: float = 0.0
    skipped: str | None = None

    @property
    def removed(self) -> int:
        return self.units_before - self.units_after


@dataclass
class Allocation:
    """Kept units per pruned group (groups not in ``kept`` keep everything) and the estimate."""

    kept: dict[int, np.ndarray]
    decisions: dict[int, GroupDecision]
    ratio: float
    dense_macs: int
    dense_params: int
    macs: int
    params: int
    warnings: list[str] = field(default_factory=list)
    latency_ms: float | None = None  # predicted by ``AllocationOptions.latency`` when one is given

    def kept_units(self, group_id: int) -> np.ndarray:
        if group_id in self.kept:
            return self.kept[group_id]
        return np.arange(self.decisions[group_id].units_before, dtype=np.int64)


# cost model -------------------------------------------------------------------------------------
def _mac_spaces(view: GraphView, i: int) -> list[Space]:
    """The axes whose sizes multiply into :func:`graphprune.cost.node_macs` for node ``i``."""
    return [Space(t, a) for t, a in mac_axes(view, i)]


class CostModel:
    """MACs and parameters after removing a number of units per group.

    A space's kept fraction is 1 - (channels removed from it by all its groups) / size; a node's MACs
    and a constant's element count are products of axis sizes, so each scales by the kept fractions
    of its axes.  Only how many units a group loses matters, not which.
    """

    def __init__(self, analysis: Analysis) -> None:
        view = analysis.view
        self.dense_macs = int(analysis.cost.macs)
        self.dense_params = int(analysis.cost.params)
        self.sizes: dict[Space, int] = {}
        self.members: dict[int, list[tuple[Space, int]]] = {}
        for g in analysis.groups:
            if not g.indices:
                continue
            spaces = [s for s in g.spaces if not s.virtual]
            self.members[g.id] = [(s, g.channels_per_unit(s)) for s in spaces]
            self.sizes.update((s, g.sizes[s]) for s in spaces)
        self.mac_terms = self._terms(
            (m, _mac_spaces(view, i)) for i, m in sorted(analysis.cost.node_macs.items())
        )
        self.param_terms = self._terms(_param_items(view))

    def _terms(self, items: Iterable[tuple[int, list[Space]]]) -> list[tuple[int, list[Space]]]:
        terms = []
        for value, spaces in items:
            hit = [s for s in spaces if s in self.sizes]
            if hit and value:
                terms.append((int(value), hit))
        return terms

    def removed_channels(self, removed_units: Mapping[int, int]) -> dict[Space, int]:
        """Channels gone from each space when each group loses ``removed_units[gid]`` units."""
        removed: dict[Space, int] = defaultdict(int)
        for gid, r in removed_units.items():
            for s, per_unit in self.members.get(gid, []):
                removed[s] += r * per_unit
        return removed

    def evaluate(self, removed_units: Mapping[int, int]) -> tuple[int, int]:
        removed = self.removed_channels(removed_units)
        return (
            self.dense_macs - self._saved(self.mac_terms, removed),
            self.dense_params - self._saved(self.param_terms, removed),
        )

    def _saved(self, terms: list[tuple[int, list[Space]]], removed: Mapping[Space, int]) -> int:
        saved = 0
        for value, spaces in terms:
            v = value
            for s in spaces:
                r = removed.get(s, 0)
                if r:
                    size = self.sizes[s]
                    v = v * max(size - r, 0) // size
            saved += value - v
        return saved

    def unit_weight(self, group: Group, view: GraphView) -> float:
        """Parameters one unit of ``group`` carries (its channel count when it carries none)."""
        params = sum(
            _numel(view, s.tensor) * per_unit / self.sizes[s]
            for s, per_unit in self.members.get(group.id, [])
            if view.is_constant(s.tensor) and view.dtypes.get(s.tensor) in _FLOAT_TYPES
        )
        return float(params) or float(sum(per for _, per in self.members.get(group.id, []))) or 1.0


def _float_constants(view: GraphView) -> list[str]:
    names = list(view.initializers) + [n.output[0] for n in view.nodes if n.op_type == "Constant" and n.output]
    return [t for t in dict.fromkeys(names) if view.dtypes.get(t) in _FLOAT_TYPES]


def _numel(view: GraphView, t: str) -> int:
    shape = view.shape(t) or ()
    return math.prod(d if isinstance(d, int) else 1 for d in shape)


def _param_items(view: GraphView) -> list[tuple[int, list[Space]]]:
    return [(_numel(view, t), [Space(t, a) for a in range(view.rank(t) or 0)]) for t in _float_constants(view)]


def estimate_cost(analysis: Analysis, kept: Mapping[int, np.ndarray]) -> tuple[int, int]:
    """(MACs, params) after keeping only ``kept[gid]`` units of each listed group."""
    by_id = {g.id: g for g in analysis.groups}
    removed = {}
    for gid, units in kept.items():
        if gid not in by_id:
            raise UsageError(f"no group {gid} in this analysis")
        g = by_id[gid]
        u = np.unique(np.asarray(units, dtype=np.int64))
        if u.size and (u[0] < 0 or u[-1] >= g.n_units):
            raise UsageError(f"kept units of group {gid} must lie in [0, {g.n_units})")
        removed[gid] = g.n_units - int(u.size)
    return CostModel(analysis).evaluate(removed)


# eligibility ------------------------------------------------------------------------------------
def _group_names(view: GraphView, g: Group) -> set[str]:
    """What ignore/ratio_for patterns match: param-owning nodes, member tensors, their producers."""
    names = set(g.nodes)
    for s in g.spaces:
        names.add(s.tensor)
        p = view.producer.get(s.tensor)
        if p is not None:
            names.add(view.node_names[p])
    return names


def _first_match(patterns: Sequence[str], names: set[str]) -> str | None:
    for p in patterns:
        if any(fnmatchcase(n, p) for n in names):
            return p
    return None


@dataclass
class _Eligible:
    """Per-group starting point: a reason to leave it alone, or the ratio it gets."""

    skipped: dict[int, str]
    override: dict[int, float]
    warnings: list[str]
    kind_pool: dict[int, str] = field(default_factory=dict)  # groups whose ratio comes from their kind


def _eligibility(analysis: Analysis, opts: AllocationOptions) -> _Eligible:
    out = _Eligible({}, {}, [])
    override_patterns = [p for p, _ in opts.ratio_for]
    override_value = dict(reversed(opts.ratio_for))  # first occurrence of a pattern wins
    used: set[str] = set()
    for g in analysis.groups:
        names = _group_names(analysis.view, g)
        used.update(p for p in (*opts.ignore, *override_patterns) if any(fnmatchcase(n, p) for n in names))
        reason = _skip_reason(g, opts, _first_match(opts.ignore, names))
        if reason:
            out.skipped[g.id] = reason
            continue
        hit = _first_match(override_patterns, names)
        kinds = dict(opts.kind_ratios)
        if hit is not None:
            out.override[g.id] = float(override_value[hit])
        elif g.kind in kinds:
            out.override[g.id] = float(kinds[g.kind])
            out.kind_pool[g.id] = g.kind
    for kind, patterns in (("ignore", opts.ignore), ("ratio_for", override_patterns)):
        for p in dict.fromkeys(patterns):
            if p not in used:
                out.warnings.append(f"{kind} pattern '{p}' matched no node or tensor of any group")
    return out


def _skip_reason(g: Group, opts: AllocationOptions, ignored_by: str | None) -> str | None:
    if g.frozen:
        return f"frozen: {g.frozen_reasons[0]}"
    if g.n_units <= 1:
        return "single unit"
    if g.lossy and not opts.allow_lossy:
        return f"lossy: {g.lossy_reasons[0]} (allow_lossy to prune it)"
    if ignored_by is not None:
        return f"ignored (pattern '{ignored_by}')"
    if opts.fixed_round_to > 1 and g.n_units < opts.fixed_round_to and not opts.round_small:
        return f"fewer units ({g.n_units}) than round_to={opts.round_to} (round_small to prune it)"
    return None


# counting ---------------------------------------------------------------------------------------
def _cap(n: int, max_ratio: float) -> int:
    return max(min(math.floor(max_ratio * n + _EPS), n - 1), 0)


def _local_count(n: int, r: float, max_ratio: float) -> int:
    return min(math.floor(r * n + _EPS), _cap(n, max_ratio))


def round_removal(n: int, r: int, round_to: int) -> int:
    """Units to remove once the kept count is rounded up to a multiple of ``round_to``."""
    if r <= 0 or round_to <= 1 or n < round_to:
        return max(r, 0)
    kept = -(-(n - r) // round_to) * round_to
    return 0 if kept >= n else n - kept


@dataclass
class _Pool:
    """Groups ranked together under global ranking; ``ratio`` None: the searched/global ratio."""

    groups: list[Group]
    ratio: float | None
    order: np.ndarray  # positions into the concatenated units, removal order, caps applied
    slot: np.ndarray  # group index of every concatenated unit
    cum: np.ndarray  # cumulative unit weight along ``order``
    total: float

    def counts(self, ratio: float) -> dict[int, int]:
        budget = ratio * self.total
        if budget <= 0 or self.order.size == 0:
            return {g.id: 0 for g in self.groups}
        take = min(int(np.searchsorted(self.cum, budget - _EPS * self.total, side="left")) + 1, self.order.size)
        counts = np.bincount(self.slot[self.order[:take]], minlength=len(self.groups))
        return {g.id: int(c) for g, c in zip(self.groups, counts.tolist(), strict=True)}


class _Planner:
    """Removal counts per group for a given ratio (local or global), then rounding."""

    def __init__(self, analysis: Analysis, scores: Mapping[int, np.ndarray], opts: AllocationOptions) -> None:
        self.opts = opts
        self.groups = {g.id: g for g in analysis.groups}
        self.elig = _eligibility(analysis, opts)
        self.active = [g for g in analysis.groups if g.id not in self.elig.skipped]
        self.scores = scores
        self.cost = CostModel(analysis)
        self.pools: list[_Pool] = []
        if opts.global_ranking:
            kinds = dict(opts.kind_ratios)
            rest = [g for g in self.active if g.id not in self.elig.override]
            if rest:
                self.pools.append(self._pool(rest, None, analysis.view))
            for kind, r in kinds.items():  # a kind with its own ratio is ranked within itself
                members = [g for g in self.active if self.elig.kind_pool.get(g.id) == kind]
                if members:
                    self.pools.append(self._pool(members, float(r), analysis.view))

    def score(self, g: Group) -> np.ndarray:
        s = self.scores.get(g.id)
        if s is None:
            raise UsageError(f"no importance scores for group {g.id} ({', '.join(g.nodes) or 'no weights'})")
        arr = np.asarray(s, dtype=np.float64)
        if arr.shape != (g.n_units,) or not np.all(np.isfinite(arr)):
            raise UsageError(f"scores of group {g.id} must be {g.n_units} finite numbers, got shape {arr.shape}")
        return arr

    def _pool(self, groups: list[Group], ratio: float | None, view: GraphView) -> _Pool:
        """Units of ``groups`` in global removal order (lowest score first, each group capped)."""
        scores = np.concatenate([self.score(g) for g in groups])
        slot = np.concatenate([np.full(g.n_units, k) for k, g in enumerate(groups)])
        unit = np.concatenate([np.arange(g.n_units) for g in groups])
        weight = np.array([self.cost.unit_weight(g, view) for g in groups])[slot]
        order = np.lexsort((unit, slot, scores))
        caps = [_cap(g.n_units, self.opts.max_ratio) for g in groups]
        seen = [0] * len(groups)
        allowed = np.zeros(order.size, dtype=bool)
        for pos, k in enumerate(slot[order].tolist()):
            allowed[pos] = seen[k] < caps[k]
            seen[k] += 1
        kept_order = order[allowed]
        return _Pool(groups, ratio, kept_order, slot, np.cumsum(weight[kept_order]), float(weight.sum()))

    def counts(self, ratio: float) -> dict[int, int]:
        """Units each active group loses at ``ratio`` (overrides keep their own), after rounding."""
        out: dict[int, int] = {}
        for pool in self.pools:
            out.update(pool.counts(ratio if pool.ratio is None else pool.ratio))
        for g in self.active:
            if g.id not in out:
                r = self.elig.override.get(g.id, ratio)
                out[g.id] = _local_count(g.n_units, r, self.opts.max_ratio)
        if self.opts.round_to == "auto" and self.opts.latency is not None:
            return self.opts.latency.round_counts(out, self.cost)
        # groups smaller than round_to are only active with round_small; round_removal leaves them be
        return {gid: round_removal(self.groups[gid].n_units, r, self.opts.fixed_round_to) for gid, r in out.items()}

    def predicted_ms(self, counts: Mapping[int, int]) -> float | None:
        lat = self.opts.latency
        return None if lat is None else float(lat.predict(self.cost.removed_channels(counts)))

    def search(self, which: str, fraction: float) -> float:
        """Smallest ratio whose estimated cost is within ``fraction`` of dense (bisection); for
        ``which="latency"`` the goal is ``fraction`` milliseconds of predicted latency."""
        if which == "latency":
            return self._search_latency(fraction)
        k = 0 if which == "macs" else 1
        dense = (self.cost.dense_macs, self.cost.dense_params)[k]
        if dense <= 0:
            raise UsageError(f"the model has no {which} to reduce; target_{which} cannot apply")
        goal = fraction * dense

        def ok(r: float) -> bool:
            return self.cost.evaluate(self.counts(r))[k] <= goal

        if ok(0.0):
            return 0.0
        if not ok(1.0):
            best = self.cost.evaluate(self.counts(1.0))[k]
            raise TargetUnreachableError(
                f"target_{which}={fraction:g} is unreachable: removing all that is allowed "
                f"(max_ratio={self.opts.max_ratio:g}, round_to={self.opts.round_to}, "
                f"{len(self.elig.skipped)} groups left alone) leaves {best / dense:.4f} of dense {which} "
                f"({best} of {dense}); raise max_ratio, ignore fewer groups or allow lossy groups"
            )
        return _bisect(ok)

    def _search_latency(self, goal_ms: float) -> float:
        def ms(r: float) -> float:
            return self.predicted_ms(self.counts(r)) or 0.0

        if ms(0.0) <= goal_ms:
            return 0.0
        best = ms(1.0)
        if best > goal_ms:
            raise TargetUnreachableError(
                f"target latency {goal_ms:g} ms is unreachable: removing all that is allowed "
                f"(max_ratio={self.opts.max_ratio:g}, {len(self.elig.skipped)} groups left alone) leaves a "
                f"predicted {best:.4g} ms (dense {ms(0.0):.4g} ms); raise max_ratio, ignore fewer groups, "
                "allow lossy groups or set a slower target"
            )
        return _bisect(lambda r: ms(r) <= goal_ms, steps=_LATENCY_SEARCH_STEPS)


def _bisect(ok: Callable[[float], bool], steps: int = _SEARCH_STEPS) -> float:
    """Smallest ratio in (0, 1] that is ``ok``, given ``ok(1.0)`` and not ``ok(0.0)``."""
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


# driver -----------------------------------------------------------------------------------------
def allocate(
    analysis: Analysis,
    scores: Mapping[int, np.ndarray],
    options: AllocationOptions | None = None,
) -> Allocation:
    """Decide which units of each group survive, from per-group scores (low score goes first)."""
    opts = options or AllocationOptions()
    planner = _Planner(analysis, scores, opts)
    target = opts.target
    ratio = planner.search(*target) if target else float(opts.ratio)
    counts = planner.counts(ratio)
    kept: dict[int, np.ndarray] = {}
    decisions: dict[int, GroupDecision] = {}
    for g in analysis.groups:
        asked = planner.elig.override.get(g.id, ratio)
        r = counts.get(g.id, 0)
        if r > 0:
            kept[g.id] = select_kept(planner.score(g), r)
            decisions[g.id] = GroupDecision(g.id, g.n_units, g.n_units - r, asked)
        elif g.id in planner.elig.skipped:
            decisions[g.id] = GroupDecision(g.id, g.n_units, g.n_units, 0.0, planner.elig.skipped[g.id])
        else:
            decisions[g.id] = GroupDecision(g.id, g.n_units, g.n_units, asked, _why_nothing(g, asked, opts))
    macs, params = planner.cost.evaluate(counts)
    return Allocation(
        kept=kept, decisions=decisions, ratio=ratio,
        dense_macs=planner.cost.dense_macs, dense_params=planner.cost.dense_params,
        macs=macs, params=params, warnings=list(planner.elig.warnings), latency_ms=planner.predicted_ms(counts),
    )


def pool_ratios(analysis: Analysis, options: AllocationOptions) -> dict[int, float | None]:
    """Under global ranking: the budget fraction of the pool each eligible group is ranked in (its
    kind's ratio, or the ratio; None when a target search will choose it)."""
    if not options.global_ranking:
        return {}
    elig = _eligibility(analysis, options)
    kinds = dict(options.kind_ratios)
    out: dict[int, float | None] = {}
    for g in analysis.groups:
        if g.id in elig.skipped:
            continue
        if g.id in elig.kind_pool:
            out[g.id] = float(kinds[elig.kind_pool[g.id]])
        elif g.id not in elig.override:
            out[g.id] = None if options.target is not None else float(options.ratio)
    return out


def select_kept(scores: np.ndarray, n_remove: int) -> np.ndarray:
    """Sorted indices of the units that survive when the ``n_remove`` lowest (ties: lowest index) go."""
    order = np.lexsort((np.arange(scores.size), scores))
    return np.sort(order[n_remove:]).astype(np.int64)


def _why_nothing(g: Group, asked: float, opts: AllocationOptions) -> str:
    if asked <= 0:
        return "ratio 0"
    if opts.global_ranking:
        return "no unit ranked low enough"
    want = _local_count(g.n_units, asked, opts.max_ratio)
    if want == 0:
        return f"ratio {asked:g} of {g.n_units} units is less than one unit"
    if opts.round_to == "auto":
        return "round_to=auto: the latency table puts the next step edge at the full width"
    return f"round_to={opts.round_to}: no multiple of {opts.round_to} kept within the ratio"
