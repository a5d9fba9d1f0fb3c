"""Sensitivity-guided allocation: spend the pruning budget where the model's outputs suffer least.

Uniform ratios treat every layer alike, and ranking importance scores across layers compares numbers
that were never meant to be compared (a weight norm, or OBSPA's error relative to one layer's own
output).  Here the damage is measured where it matters: the relative squared error of the model's
outputs, ``Σ‖y' − y‖² / Σ‖y‖²``, on the inputs that scored the groups (the data-free prior, or
calibration data).  Each group in turn is cut alone, from the dense model, at a few depths along its
own removal order (up to ``reach`` × its ratio).  :func:`measure` can also cut each group *in context*
(the others held at a ``background`` cut, e.g. the uniform allocation), which gives marginal damage at
the operating point; alone measured better on the MNIST CNNs and ViT and no worse on MiniLM, so shrink
uses that.  The trials run in one ONNX Runtime session whose touched weights are graph inputs, fed per
run; under OBSPA the trial weights are the refitted ones, so a group is judged after compensation.

The slopes, per MAC or parameter removed (whichever the budget counts) and made non-decreasing
along each group's order, become the units' scores, and the allocator's global ranking removes the
cheapest units first: a greedy knapsack that treats marginal damages as additive.  Within a group the
removal order is unchanged.  Groups with a kind ratio (``--heads``) are ranked among their own kind,
so the asked fraction still holds in total while it moves between layers.

Limits: ``levels`` forward passes per group (one more in context), each from the first node the
group changes, on cached dense activations; bounded by ``budget`` MACs (fewer inputs are used first).
A refit bias the model has no slot for (a Conv without bias) is left out of the trial; units beyond
the deepest level rank after every measured unit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import helper

from graphprune.allocation import AllocationOptions, CostModel, pool_ratios
from graphprune.analysis import Analysis
from graphprune.errors import GraphpruneError, UsageError
from graphprune.graph import GraphView
from graphprune.groups import Group
from graphprune.rules import Space
from graphprune.tensors import has_external
from graphprune.verify import session

Feeds = list[dict[str, np.ndarray]]


@dataclass(frozen=True)
class SensitivityOptions:
    """``levels`` trial depths per group, up to ``reach`` × the group's asked ratio (at most its cap);
    ``samples`` inputs per trial (fewer when ``budget`` MACs of trials would be exceeded)."""

    levels: int = 6
    reach: float = 2.5
    samples: int = 32
    min_samples: int = 4
    budget: float = 2e12
    cache_prefix: bool = True  # trials run from the first node they change, on cached dense activations

    def __post_init__(self) -> None:
        if self.levels < 1 or self.samples < 1 or self.min_samples < 1 or not self.reach > 0:
            raise UsageError("sensitivity levels, samples and reach must be positive")


class Trial(Protocol):
    """How groups are cut for a trial: which constants a group's cut changes, and their values."""

    def tensors(self, group: Group) -> set[str]: ...

    def values(self, removed: Mapping[int, np.ndarray], only: set[str]) -> dict[str, np.ndarray]: ...


@dataclass
class Curve:
    counts: np.ndarray  # units removed, 0 first
    damage: np.ndarray  # relative output error at each count


@dataclass
class SensitivityReport:
    curves: dict[int, Curve] = field(default_factory=dict)
    samples: int = 0
    trials: int = 0
    seconds: float = 0.0
    inputs: str = ""

    def summary(self) -> str:
        return (f"sensitivity: {self.trials} trials over {len(self.curves)} groups on {self.samples} inputs "
                f"({self.inputs}) in {self.seconds:.1f} s; budget spent where the outputs change least")

    def as_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "trials": self.trials, "inputs": self.inputs,
                "seconds": round(self.seconds, 3),
                "curves": {str(g): {"removed": c.counts.tolist(), "damage": [float(f"{d:.4g}") for d in c.damage]}
                           for g, c in sorted(self.curves.items())}}


# trials -----------------------------------------------------------------------------------------
Removed = Mapping[int, np.ndarray]  # group id -> removed unit indices


@dataclass
class MaskTrial:
    """Magnitude pruning: the removed channels' consumer columns (and producers where no weight
    consumes them) become zero, as in the masked reference of the proof."""

    analysis: Analysis
    spaces: set[Space]  # see graphprune.pruner.masking_spaces

    def __post_init__(self) -> None:
        self.by_id = {g.id: g for g in self.analysis.groups}
        self.members: dict[int, list[Space]] = {
            g.id: [p.space for p in g.params if p.space in self.spaces and not p.space.virtual]
            for g in self.analysis.groups}

    def tensors(self, group: Group) -> set[str]:
        return {s.tensor for s in self.members[group.id]}

    def values(self, removed: Removed, only: set[str], base: dict[str, np.ndarray] | None = None
               ) -> dict[str, np.ndarray]:
        """Every constant in ``only`` with all groups' ``removed`` units cut (zeroed); ``base`` holds
        values already computed for this cut (refits), the rest start dense."""
        view = self.analysis.view
        out = dict(base or {})
        for gid, units in removed.items():
            g = self.by_id[gid]
            for s in self.members[gid]:
                if s.tensor not in only or not len(units):
                    continue
                arr = out.get(s.tensor)
                if arr is None:
                    arr = np.array(view.constant_value(s.tensor))
                idx: list[Any] = [slice(None)] * arr.ndim
                idx[s.axis] = g.indices[s][units].ravel()
                arr[tuple(idx)] = 0
                out[s.tensor] = arr
        for t in only:
            if t not in out:
                out[t] = np.asarray(view.constant_value(t))
        return out


@dataclass
class ObspaTrial(MaskTrial):
    """OBSPA: consumers refitted on the channels every group leaves them (bias compensated where the
    graph has a slot for it), then masked like :class:`MaskTrial`."""

    scoring: Any = None  # graphprune.obspa.ObspaScoring

    def __post_init__(self) -> None:
        super().__post_init__()
        self.states = {k: cs for k, cs in self.scoring.consumers.items() if cs.stats.mode != "identity"}
        self.readers: dict[Space, list[int]] = {}  # consumer axis -> groups with channels in it
        for g in self.analysis.groups:
            for s in g.indices:
                self.readers.setdefault(s, []).append(g.id)

    def _states(self, group: Group) -> list[Any]:
        return [self.states[k] for k in self.scoring.group_consumers.get(group.id, []) if k in self.states]

    def tensors(self, group: Group) -> set[str]:
        out = super().tensors(group)
        for cs in self._states(group):
            c = cs.consumer
            out.add(c.weight)
            if cs.stats.bias and c.bias.usable and c.bias.tensor is not None:
                out.add(c.bias.tensor)
        return out

    def values(self, removed: Removed, only: set[str], base: dict[str, np.ndarray] | None = None
               ) -> dict[str, np.ndarray]:
        from graphprune.obspa_rewrite import refit_values

        view = self.analysis.view
        out = dict(base or {})
        for cs in self.states.values():
            c = cs.consumer
            if c.weight not in only:
                continue
            cut = [self.by_id[gid].indices[c.space][removed[gid]].ravel()
                   for gid in self.readers.get(c.space, []) if gid in removed and len(removed[gid])]
            if not cut:
                continue
            matrix, bias, _ = refit_values(view, cs, np.setdiff1d(np.arange(c.n_in), np.concatenate(cut)))
            out[c.weight] = c.stored(matrix, np.asarray(view.constant_value(c.weight)))
            slot = c.bias
            if bias is not None and slot.usable and slot.tensor is not None:
                dtype = np.asarray(view.constant_value(slot.tensor)).dtype
                out[slot.tensor] = (bias / slot.scale).reshape(slot.shape or (-1,)).astype(dtype)
        return super().values(removed, only, out)


# session ----------------------------------------------------------------------------------------
def _weights_as_inputs(model: onnx.ModelProto, view: GraphView, names: set[str]) -> onnx.ModelProto:
    """A copy of ``model`` where the constants ``names`` are graph inputs (fed at every run)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [t for t in m.graph.initializer if t.name not in names]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    nodes = [n for n in m.graph.node if not (n.op_type == "Constant" and n.output and n.output[0] in names)]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    for t in sorted(names):
        shape = view.shape(t)
        m.graph.input.append(helper.make_tensor_value_info(t, view.dtypes.get(t, onnx.TensorProto.FLOAT),
                                                           list(shape) if shape is not None else None))
    return m


def _take(feeds: Feeds, n: int) -> Feeds:
    """The first ``n`` samples of ``feeds`` (whole batches, the last one cut)."""
    out: Feeds = []
    left = n
    for f in feeds:
        if left <= 0:
            break
        b = len(next(iter(f.values())))
        out.append({k: v[:left] for k, v in f.items()} if b > left else f)
        left -= min(b, left)
    return out


def _float_outputs(sess: Any) -> list[str]:
    return [o.name for o in sess.get_outputs() if "float" in o.type or "double" in o.type]


# driver -----------------------------------------------------------------------------------------
def measure(analysis: Analysis, scores: Mapping[int, np.ndarray], reach: Mapping[int, int], feeds: Feeds,
            trial: Trial, opts: SensitivityOptions, background: Mapping[int, int] | None = None, inputs: str = "",
            progress: Callable[[str], None] | None = None) -> SensitivityReport:
    """Damage curves of every group in ``reach`` (units it may lose): the group is cut at each level
    while every other group stays cut as in ``background`` (units removed; none by default), so a
    curve's slopes are that group's marginal damage at the operating point."""
    t0 = time.perf_counter()
    view = analysis.view
    by_id = {g.id: g for g in analysis.groups}
    todo = {gid: r for gid, r in reach.items() if r > 0}
    report = SensitivityReport(inputs=inputs)
    if not todo or not feeds:
        return report
    orders = {gid: np.lexsort((np.arange(by_id[gid].n_units), np.asarray(scores[gid], np.float64)))
              for gid in set(todo) | set(background or {})}
    bg = {gid: orders[gid][:c] for gid, c in (background or {}).items() if c > 0}
    first = [0] if bg else []  # the group uncut: dense (damage 0) unless others are cut
    levels = {gid: [*first, *_levels(r, opts.levels)] for gid, r in todo.items()}
    n_trials = sum(len(v) for v in levels.values())
    total = sum(len(next(iter(f.values()))) for f in feeds)
    per_sample = max(analysis.cost.macs, 1) * n_trials
    samples = int(min(total, opts.samples, max(opts.min_samples, opts.budget // per_sample)))
    feeds = _take(feeds, samples)
    names = set().union(*(trial.tensors(by_id[gid]) for gid in set(todo) | set(bg)))
    dense_values = {t: np.asarray(view.constant_value(t)) for t in names}
    runner = _Runner(_weights_as_inputs(view.model, view, names), view, feeds, opts.cache_prefix and not bg)
    only = {gid: trial.tensors(by_id[gid]) for gid in todo}
    dense = runner.prepare(dense_values, {runner.start(t) for t in only.values()})
    norm = sum(float(np.square(y.astype(np.float64)).sum()) for ys in dense for y in ys) or 1.0
    base = {**dense_values, **trial.values(bg, names)}
    done = 0
    for gid, counts in levels.items():
        start = runner.start(only[gid])
        damage = []
        for c in counts:
            got = runner.run({**base, **trial.values({**bg, gid: orders[gid][:c]}, only[gid])}, start)
            err = sum(float(np.square(a.astype(np.float64) - b).sum())
                      for ya, yb in zip(got, dense, strict=True) for a, b in zip(ya, yb, strict=True))
            damage.append(err / norm)
            done += 1
        if not bg:
            counts, damage = [0, *counts], [0.0, *damage]
        report.curves[gid] = Curve(np.array(counts, dtype=np.int64), np.array(damage))
        if progress is not None:
            progress(f"sensitivity {done}/{n_trials}")
    report.samples, report.trials, report.seconds = samples, n_trials, time.perf_counter() - t0
    return report


class _Runner:
    """Runs the weights-as-inputs model with some constants replaced.  With ``cache``, a trial that
    changes constants first read by node ``s`` runs only ``nodes[s:]``, fed the activations the dense
    model computed before ``s`` (kept from one dense run, up to ``MAX_CACHE_BYTES``)."""

    MAX_CACHE_BYTES = 1 << 30

    def __init__(self, model: onnx.ModelProto, view: GraphView, feeds: Feeds, cache: bool) -> None:
        self.model, self.view, self.feeds = model, view, feeds
        self.nodes = list(model.graph.node)
        self.first_use: dict[str, int] = {}
        for j, n in enumerate(self.nodes):
            for t in n.input:
                self.first_use.setdefault(t, j)
        # not with control flow (subgraphs read outer tensors), nor with external weights (every suffix
        # session would write its own copy of them)
        self.cache = cache and not has_external(model) and not any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in self.nodes for a in n.attribute)
        try:
            self.sess = session(model)
        except Exception as e:  # noqa: BLE001 - ORT raises many types
            raise GraphpruneError(f"ONNX Runtime cannot load the model for the sensitivity trials: {e}") from e
        self.fetch = _float_outputs(self.sess)
        if not self.fetch:
            names = ", ".join(f"'{o.name}' ({o.type})" for o in self.sess.get_outputs())
            raise UsageError(f"--sensitivity measures damage on floating-point outputs and this model has none "
                             f"({names}); prune without --sensitivity")
        self.saved: list[dict[str, np.ndarray]] = []
        self.suffixes: dict[int, tuple[Any, list[str], list[str]]] = {}

    def start(self, names: set[str]) -> int:
        return min((self.first_use[t] for t in names if t in self.first_use), default=0) if self.cache else 0

    def _frontier(self, s: int) -> list[str]:
        produced = {o for n in self.nodes[s:] for o in n.output}
        consts = {t.name for t in self.model.graph.initializer}
        return sorted({t for n in self.nodes[s:] for t in n.input if t and t not in produced and t not in consts})

    def prepare(self, dense_values: Mapping[str, np.ndarray], starts: set[int]) -> list[list[np.ndarray]]:
        """Dense outputs per feed; with the cache, also the activations the suffixes start from."""
        inputs = {i.name for i in self.model.graph.input}
        keep = sorted({t for s in starts if s > 0 for t in self._frontier(s)} - inputs) if self.cache else []
        if not keep:
            self.dense = [self.sess.run(self.fetch, {**f, **dense_values}) for f in self.feeds]
            self.saved = [{} for _ in self.feeds]
            return self.dense
        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        have = {o.name for o in m.graph.output}
        m.graph.output.extend(helper.make_tensor_value_info(t, self.view.dtypes.get(t, onnx.TensorProto.FLOAT), None)
                              for t in keep if t not in have)
        sess = session(m, basic=True)
        dense, size = [], 0
        for f in self.feeds:
            got = sess.run(self.fetch + keep, {**f, **dense_values})
            dense.append(got[:len(self.fetch)])
            self.saved.append(dict(zip(keep, got[len(self.fetch):], strict=True)))
            size += sum(a.nbytes for a in got[len(self.fetch):])
        if size > self.MAX_CACHE_BYTES:
            self.cache, self.saved = False, []
        self.dense = dense
        return dense

    def _suffix(self, s: int) -> tuple[Any, list[str], list[str]]:
        if s not in self.suffixes:
            nodes = self.nodes[s:]
            frontier = self._frontier(s)
            used = {t for n in nodes for t in n.input}
            produced = {o for n in nodes for o in n.output}
            graph_inputs = {i.name: i for i in self.model.graph.input}
            ins = [graph_inputs[t] if t in graph_inputs else
                   helper.make_tensor_value_info(t, self.view.dtypes.get(t, onnx.TensorProto.FLOAT), None)
                   for t in frontier]
            outs = [o for o in self.model.graph.output if o.name in produced and o.name in self.fetch]
            graph = helper.make_graph(nodes, "suffix", ins, outs,
                                      [t for t in self.model.graph.initializer if t.name in used])
            sub = helper.make_model(graph, opset_imports=self.model.opset_import, ir_version=self.model.ir_version)
            sub.functions.extend(self.model.functions)
            self.suffixes[s] = (session(sub), frontier, [o.name for o in outs])
        return self.suffixes[s]

    def run(self, values: Mapping[str, np.ndarray], start: int) -> list[list[np.ndarray]]:
        """Outputs (in ``fetch`` order) per feed; outputs computed before ``start`` are the dense ones."""
        if start <= 0 or not self.cache:
            return [self.sess.run(self.fetch, {**f, **values}) for f in self.feeds]
        sess, frontier, outs = self._suffix(start)
        out = []
        for k, f in enumerate(self.feeds):
            pool = {**f, **self.saved[k], **values}
            got = dict(zip(outs, sess.run(outs, {t: pool[t] for t in frontier}), strict=True))
            out.append([got.get(name, self.dense[k][i]) for i, name in enumerate(self.fetch)])
        return out


def _levels(reach: int, levels: int) -> list[int]:
    return sorted({max(1, math.ceil(reach * j / levels)) for j in range(1, levels + 1)})


def reach_units(analysis: Analysis, alloc: AllocationOptions, factor: float) -> dict[int, int]:
    """How deep to measure each globally ranked group: ``factor`` × its pool's ratio (the cap when the
    ratio is searched for a target), at most its cap."""
    by_id = {g.id: g for g in analysis.groups}
    out = {}
    for gid, r in pool_ratios(analysis, alloc).items():
        g = by_id[gid]
        cap = max(min(math.floor(alloc.max_ratio * g.n_units + 1e-9), g.n_units - 1), 0)
        want = cap if r is None else min(cap, math.ceil(min(factor * r, 1.0) * g.n_units))
        if want > 0 and (r is None or r > 0):
            out[gid] = want
    return out


def unit_costs(analysis: Analysis, gids: list[int], per: str) -> dict[int, float]:
    """What one unit of each group costs: MACs (``per="macs"``) or parameters, as the allocator counts."""
    cost = CostModel(analysis)
    k = 0 if per == "macs" else 1
    dense = (cost.dense_macs, cost.dense_params)[k]
    return {gid: max(float(dense - cost.evaluate({gid: 1})[k]), 1.0) for gid in gids}


def calibrated_scores(analysis: Analysis, scores: Mapping[int, np.ndarray], report: SensitivityReport,
                      per: str = "params") -> dict[int, np.ndarray]:
    """Per-unit scores from the damage curves: marginal damage per MAC or parameter (``per``: what the
    budget counts), non-decreasing along each group's order; units past the deepest trial rank after
    every measured unit.  Unmeasured groups keep their scores."""
    unit = unit_costs(analysis, list(report.curves), per)
    by_id = {g.id: g for g in analysis.groups}
    out = {gid: np.asarray(s, np.float64) for gid, s in scores.items()}
    measured: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for gid, curve in report.curves.items():
        g = by_id[gid]
        order = np.lexsort((np.arange(g.n_units), np.asarray(scores[gid], np.float64)))
        per_unit = np.zeros(int(curve.counts[-1]))
        for j in range(1, len(curve.counts)):
            a, b = int(curve.counts[j - 1]), int(curve.counts[j])
            per_unit[a:b] = max(curve.damage[j] - curve.damage[j - 1], 0.0) / (b - a)
        per_unit = np.maximum.accumulate(per_unit) / unit[gid]
        measured[gid] = (order, per_unit)
    top = max((float(p.max()) for _, p in measured.values() if p.size), default=0.0)
    span = max(top, 1e-30)
    for gid, (order, per_unit) in measured.items():
        n = order.size
        s = np.empty(n)
        m = per_unit.size
        s[order[:m]] = per_unit + span * 1e-9 * np.arange(m) / max(n, 1)
        s[order[m:]] = 2 * span + span * np.arange(n - m) / max(n, 1)
        out[gid] = s
    return out
