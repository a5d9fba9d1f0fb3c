"""The latency cost model allocation uses: a measured table's per-layer lookups summed over the model.

:class:`TableLatency` predicts ``sum(layer lookups) + rest * activation fraction``: the rest of the dense
model's measured time (pooling, adds, copies: what no table covers) shrinks with the activation memory
left.  Convs whose channel counts leave the block their dense counts were on cost more in a whole graph
than alone (layout conversions where they meet aligned layers); a probe (one unit less in every other
group, timed beside the dense model) measures that as a fraction of their time.  ``round_to="auto"``
rounds each group's kept count up to the step edge the table shows (:meth:`TableLatency.round_counts`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from graphprune.allocation import CostModel
from graphprune.analysis import Analysis
from graphprune.graph import GraphView
from graphprune.latency_table import LatencyTable
from graphprune.layer_shapes import Layer
from graphprune.rules import Space

PROBE_KIND = "every-other-group-minus-one"
MIN_ALIGN = 8  # round_to="auto" keeps counts multiples of at least this (where the full width is)


def probe_groups(analysis: Analysis) -> dict[int, int]:
    """Units the probe removes: one from every other prunable group."""
    return {g.id: 1 for g in [g for g in analysis.groups if g.prunable][::2]}


class TableLatency:
    """Predicted latency of ``analysis``'s model with channels removed (``AllocationOptions.latency``)."""

    def __init__(self, analysis: Analysis, table: LatencyTable, layers: Sequence[Layer], dense_ms: float,
                 tolerance: float = 0.01, probe: Mapping[str, Any] | None = None) -> None:
        self.layers = [lay for lay in layers if table.rows(lay.sig)]
        self.curves = [table.curve(lay.sig) for lay in self.layers]
        self.align = [max(8, curve.f_out.block) if lay.sig.op == "conv" else 0
                      for lay, curve in zip(self.layers, self.curves, strict=True)]
        self.graph_penalty = 0.0  # extra fraction of an off-grid conv's time in the graph (the probe's)
        self.tolerance = tolerance
        cost = CostModel(analysis)
        self.sizes = cost.sizes
        self.acts = _activation_terms(analysis.view, self.sizes)
        self.act_total = sum(n for n, _ in self.acts) or 1
        self.dense_ms = float(dense_ms)
        self.layers_dense_ms = self.layer_ms({})
        self.rest_ms = self.dense_ms - self.layers_dense_ms
        self.group_layers: dict[int, list[int]] = {}
        self.units: dict[int, int] = {}
        for g in analysis.groups:
            spaces = set(g.spaces)
            hit = [k for k, lay in enumerate(self.layers) if lay.cin in spaces or lay.cout in spaces]
            if hit and g.indices:
                self.group_layers[g.id] = hit
                self.units[g.id] = g.n_units
        if probe:
            self.graph_penalty = self._fit_penalty(analysis, cost, probe)

    def off_grid(self, k: int, ci: int, co: int) -> float:
        """How far conv ``k`` left the block its dense counts were on: 0.5 per axis (input, output)
        whose count is off it.  Per axis, so that each group's rounding has its own effect."""
        a, sig = self.align[k], self.layers[k].sig
        if not a:
            return 0.0
        return 0.5 * (ci % a != 0 and sig.cin % a == 0) + 0.5 * (co % a != 0 and sig.cout % a == 0)

    def _fit_penalty(self, analysis: Analysis, cost: CostModel, probe: Mapping[str, Any]) -> float:
        """In a whole graph an off-grid conv costs more than alone (layout conversions appear where it
        meets layers on the grid, which no single-layer measurement sees): the probe, one unit less in
        every other group timed beside the dense model, says how much, as a fraction of its time."""
        if probe.get("kind") != PROBE_KIND:
            return 0.0
        removed = cost.removed_channels(probe_groups(analysis))
        measured = probe["probe_ms"] * self.dense_ms / probe["dense_ms"]
        off = sum(self.curves[k](*lay.counts(removed)) * self.off_grid(k, *lay.counts(removed))
                  for k, lay in enumerate(self.layers))
        extra = measured - self.predict(removed)
        return float(min(max(extra / off, 0.0), 3.0)) if off > 0 else 0.0

    def layer_ms(self, removed: Mapping[Space, int], only: Sequence[int] | None = None) -> float:
        total = 0.0
        for k in range(len(self.layers)) if only is None else only:
            ci, co = self.layers[k].counts(removed)
            t = self.curves[k](ci, co)
            total += t * (1 + self.graph_penalty * self.off_grid(k, ci, co)) if self.graph_penalty else t
        return total

    def activation_fraction(self, removed: Mapping[Space, int]) -> float:
        left = 0.0
        for n, spaces in self.acts:
            f = float(n)
            for s in spaces:
                f *= max(self.sizes[s] - removed.get(s, 0), 0) / self.sizes[s]
            left += f
        return left / self.act_total

    def predict(self, removed: Mapping[Space, int]) -> float:
        ms = self.layer_ms(removed) + self.rest_ms * self.activation_fraction(removed)
        return max(ms, 1e-3 * self.dense_ms)

    def round_counts(self, counts: Mapping[int, int], cost: CostModel) -> dict[int, int]:
        """Per group, the kept count k rounded up to a multiple of 8, 16, 32 or 64 (``MIN_ALIGN`` and up;
        any count for a group whose full width is off those) whose layers the table puts fastest; within
        ``tolerance`` of the fastest, the largest (a free step edge).  Two passes: the second decides
        each group again with its neighbours' first choices.  Off-grid counts are not offered although a
        single layer may run them as fast: in a whole graph they cost layout conversions (see
        benchmarks/staircase.py, global ranking at round-to 1)."""
        out = dict(counts)
        for _ in range(2):
            base = cost.removed_channels(out)
            for gid, r in counts.items():
                hit, n = self.group_layers.get(gid), self.units.get(gid, 0)
                if r <= 0 or not hit:
                    continue
                k, now = n - r, out[gid]
                aligns = [a for a in (2, 4, 8, 16, 32, 64) if a >= MIN_ALIGN or n % MIN_ALIGN]
                cands = sorted(c for c in {-(-k // a) * a for a in aligns} | ({k} if n % MIN_ALIGN else set())
                               if c <= n) or [n]
                ms = []
                for kept in cands:
                    trial = dict(base)
                    for s, per in cost.members.get(gid, []):
                        trial[s] = base.get(s, 0) + (n - kept - now) * per
                    ms.append(self.layer_ms(trial, hit))
                best = min(ms)
                out[gid] = n - max(c for c, t in zip(cands, ms, strict=True) if t <= best * (1 + self.tolerance))
        return out

    def breakdown(self, removed: Mapping[Space, int]) -> list[dict[str, Any]]:
        rows = []
        for lay, curve in zip(self.layers, self.curves, strict=True):
            ci, co = lay.counts(removed)
            rows.append({"node": lay.node, "layer": lay.sig.describe(), "cin": ci, "cout": co,
                         "ms": curve(ci, co), "dense_ms": curve.dense})
        return rows


def _activation_terms(view: GraphView, sizes: Mapping[Space, int]) -> list[tuple[int, list[Space]]]:
    """Element counts of the activations (node outputs) and the channel spaces they lose."""
    terms = []
    for n in view.nodes:
        for t in n.output:
            shape = view.shape(t) if t else None
            if not shape or view.is_constant(t):
                continue
            numel = math.prod(d if isinstance(d, int) else 1 for d in shape)
            terms.append((numel, [Space(t, a) for a in range(len(shape)) if Space(t, a) in sizes]))
    return terms
