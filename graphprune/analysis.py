"""Dependency analysis: from per-node channel rules to coupled channel groups.

1. Weight axes declared by rules (producer outputs, consumer inputs) seed the *live* channel spaces.
2. Rules are re-evaluated as liveness spreads until nothing changes (a fixpoint): every coupling
   with a live end makes its other end live.
3. Live spaces and their couplings form a networkx graph; each connected component is refined to
   single channels by a vectorised union-find over the index maps.  A *unit* is one class of
   channels that must go together; units with the same footprint (same spaces, same counts) form a
   :class:`~graphprune.groups.Group`.
4. Fail closed: spaces touched by an operator without a rule, spaces a rule does not mention,
   graph inputs/outputs and unknown sizes freeze their groups, with the reason recorded.

Nothing here mutates the model.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import onnx

from graphprune.cost import Cost, count
from graphprune.graph import GraphView
from graphprune.groups import Group
from graphprune.model_io import LoadedModel, load_model
from graphprune.rules import AnalysisOptions, Coupling, NodeContext, Param, RuleOutput, Space, lookup
from graphprune.unionfind import components

log = logging.getLogger(__name__)

_SEED_ROLES = ("in", "out")


@dataclass
class Analysis:
    """Result of :func:`analyze`: groups plus everything needed to explain them."""

    view: GraphView
    groups: list[Group]
    graph: nx.MultiGraph
    cost: Cost
    frozen_spaces: dict[Space, list[str]]
    unknown_shapes: list[str]
    options: AnalysisOptions
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def model(self) -> onnx.ModelProto:
        return self.view.model

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def group_of(self, space: Space) -> list[Group]:
        return [g for g in self.groups if space in g.indices]

    def node_groups(self, node_name: str) -> list[Group]:
        return [g for g in self.groups if node_name in g.nodes]


class _Engine:
    def __init__(self, view: GraphView, options: AnalysisOptions) -> None:
        self.view = view
        self.options = options
        self.live: set[Space] = set()
        self.outputs: dict[int, RuleOutput | None] = {}
        self.touching: dict[str, list[int]] = defaultdict(list)
        for i, n in enumerate(view.nodes):
            for t in set(n.input) | set(n.output) | set(view.implicit_inputs.get(i, [])):
                if t:
                    self.touching[t].append(i)
        self.rule_names: dict[int, str] = {}
        self.defaults_allowed = True

    def evaluate(self, i: int) -> RuleOutput | None:
        node = self.view.nodes[i]
        domain = node.domain or ""
        entry = lookup(domain, node.op_type, self.view.opset_for(domain))
        if entry is None:
            return None
        self.rule_names[i] = entry.qualname
        ctx = NodeContext(self.view, i, self.live.__contains__, self.options)
        ctx.defaults_allowed = self.defaults_allowed
        return entry.fn(ctx)

    def _activate(self, s: Space, queue: deque[int], queued: set[int]) -> None:
        if s in self.live:
            return
        self.live.add(s)
        nodes = self.touching.get(s.tensor, [])
        if s.virtual:
            owner = s.tensor[1:].rsplit(":", 1)[0]
            nodes = [i for i, name in enumerate(self.view.node_names) if name == owner]
        for j in nodes:
            if j not in queued:
                queued.add(j)
                queue.append(j)

    def run(self) -> None:
        """Spread liveness with ambiguous choices deferred, then again with defaults allowed."""
        self.defaults_allowed = False
        self._fixpoint()
        self.defaults_allowed = True
        self._fixpoint()

    def _fixpoint(self) -> None:
        queue: deque[int] = deque(range(len(self.view.nodes)))
        queued = set(queue)
        while queue:
            i = queue.popleft()
            queued.discard(i)
            out = self.evaluate(i)
            self.outputs[i] = out
            if out is None:
                continue
            for p in out.params:
                if p.role in _SEED_ROLES:
                    self._activate(p.space, queue, queued)
            changed = True
            while changed:  # a node's own couplings can chain (x -> w -> y)
                changed = False
                for c in out.couplings:
                    a_live, b_live = c.a in self.live, c.b in self.live
                    if a_live != b_live:
                        self._activate(c.b if a_live else c.a, queue, queued)
                        changed = True


def analyze(
    source: str | onnx.ModelProto | LoadedModel,
    options: AnalysisOptions | None = None,
) -> Analysis:
    """Find coupled channel groups in a model (path, ModelProto or :class:`LoadedModel`)."""
    t0 = time.perf_counter()
    options = options or AnalysisOptions()
    loaded = source if isinstance(source, LoadedModel) else load_model(source)
    view = GraphView(loaded.model)
    engine = _Engine(view, options)
    engine.run()
    frozen: dict[Space, list[str]] = defaultdict(list)
    lossy: dict[Space, list[str]] = defaultdict(list)
    params: dict[Space, list[Param]] = defaultdict(list)
    tags: dict[Space, set[str]] = defaultdict(set)
    couplings: list[Coupling] = []
    live = engine.live

    live_by_tensor: dict[str, list[Space]] = defaultdict(list)
    for s in live:
        live_by_tensor[s.tensor].append(s)
    for i, out in engine.outputs.items():
        node = view.nodes[i]
        name = view.node_names[i]
        tensors = list(node.input) + list(node.output) + view.implicit_inputs.get(i, [])
        node_live = [s for t in dict.fromkeys(tensors) if t for s in live_by_tensor.get(t, [])]
        if out is None:
            domain = node.domain or "ai.onnx"
            reason = (
                f"no channel rule for {domain}::{node.op_type} (opset {view.opset_for(node.domain or '')}) "
                f"at node '{name}'"
            )
            for s in node_live:
                frozen[s].append(reason)
            continue
        mentioned = out.mentioned()
        whole = {t: r for t, r in out.freezes if isinstance(t, str)}
        for target, r in out.freezes:
            if isinstance(target, Space) and target in live:
                frozen[target].append(r)
        for s in node_live:
            if s.tensor in whole:
                frozen[s].append(whole[s.tensor])
            elif s not in mentioned:
                frozen[s].append(
                    f"rule {engine.rule_names.get(i)} for {node.op_type} '{name}' does not handle axis "
                    f"{s.axis} of '{s.tensor}'"
                )
        for s, r in out.lossy:
            if s in live:
                lossy[s].append(r)
        for s, tag in out.tags:
            if s in live:
                tags[s].add(tag)
        for p in out.params:
            if p.space in live:
                params[p.space].append(p)
        for c in out.couplings:
            if c.a in live and c.b in live:
                couplings.append(c)

    for t in view.graph_inputs:
        for s in live_by_tensor.get(t, []):
            frozen[s].append(f"graph input '{t}'")
    for t in view.graph_outputs:
        for s in live_by_tensor.get(t, []):
            frozen[s].append(f"graph output '{t}'")

    sizes = _space_sizes(view, live, couplings)
    for s in live:
        if sizes.get(s) is None:
            frozen[s].append(f"size of axis {s.axis} of '{s.tensor}' is unknown")

    g = nx.MultiGraph()
    g.add_nodes_from(live)
    for c in couplings:
        g.add_edge(c.a, c.b, coupling=c)

    cost = count(view)
    groups: list[Group] = []
    for comp in nx.connected_components(g):
        groups.extend(_split_component(g.subgraph(comp), sizes, frozen, lossy, params, tags, view, cost, len(groups)))
    groups.sort(key=lambda gr: (not gr.prunable, -gr.macs, gr.spaces[0]))
    groups = [gr.renumbered(k) for k, gr in enumerate(groups)]
    return Analysis(
        view=view,
        groups=groups,
        graph=g,
        cost=cost,
        frozen_spaces={s: r for s, r in frozen.items() if r},
        unknown_shapes=view.unknown_shape_tensors,
        options=options,
        seconds=time.perf_counter() - t0,
        warnings=list(loaded.warnings),
    )


def _kind(tags: set[str]) -> str:
    if "heads" in tags:
        return "heads"
    if "head-dim" in tags:
        return "head-dim"
    return "channels"


def _space_sizes(view: GraphView, live: set[Space], couplings: list[Coupling]) -> dict[Space, int | None]:
    sizes: dict[Space, int | None] = {}
    for s in live:
        sizes[s] = None if s.virtual else view.static_dim(s.tensor, s.axis)
    changed = True
    while changed:  # virtual spaces take their size from their couplings
        changed = False
        for c in couplings:
            na, nb = sizes.get(c.a), sizes.get(c.b)
            m = c.map
            if nb is None and na is not None and c.b.virtual:
                if m.kind == "modulo":
                    sizes[c.b] = m.k
                elif m.kind == "factor":
                    sizes[c.b] = na * m.outer * m.inner
                changed = sizes.get(c.b) is not None
            elif na is None and nb is not None and c.a.virtual and m.kind == "factor":
                sizes[c.a] = nb // (m.outer * m.inner)
                changed = True
    return sizes


def _split_component(
    sub: nx.MultiGraph,
    sizes: dict[Space, int | None],
    frozen: dict[Space, list[str]],
    lossy: dict[Space, list[str]],
    params: dict[Space, list[Param]],
    tags: dict[Space, set[str]],
    view: GraphView,
    cost: Cost,
    start_id: int,
) -> list[Group]:
    spaces = sorted(sub.nodes)
    unknown = [s for s in spaces if sizes.get(s) is None]
    reasons = sorted({r for s in spaces for r in frozen.get(s, [])})
    if unknown:  # cannot refine to channels: one frozen group, for reporting
        return [Group.frozen_region(start_id, spaces, reasons, params, view, cost)]
    if not any(sizes[s] for s in spaces):
        empty = [f"'{s.tensor}' axis {s.axis} has no channels (size 0)" for s in spaces[:2]]
        return [Group.frozen_region(start_id, spaces, reasons + empty, params, view, cost)]
    offsets: dict[Space, int] = {}
    n = 0
    for s in spaces:
        offsets[s] = n
        n += int(sizes[s])  # type: ignore[arg-type]
    us, vs = [], []
    for _, _, data in sub.edges(data=True):
        c: Coupling = data["coupling"]
        ia, ib = c.map.pairs(int(sizes[c.a]), int(sizes[c.b]))  # type: ignore[arg-type]
        us.append(ia + offsets[c.a])
        vs.append(ib + offsets[c.b])
    labels = components(n, np.concatenate(us) if us else np.zeros(0, np.int64),
                        np.concatenate(vs) if vs else np.zeros(0, np.int64))
    space_id = np.concatenate([np.full(int(sizes[s]), k) for k, s in enumerate(spaces)])  # type: ignore[arg-type]
    local = np.concatenate([np.arange(int(sizes[s])) for s in spaces])  # type: ignore[arg-type]
    # unit = class of channels; a unit's footprint = how many channels it owns in each space
    _, lab = np.unique(labels, return_inverse=True)
    n_lab, n_sp = int(lab.max()) + 1, len(spaces)
    counts = np.bincount(lab * n_sp + space_id, minlength=n_lab * n_sp).reshape(n_lab, n_sp)
    footprints, sig_of_lab = np.unique(counts, axis=0, return_inverse=True)
    sig_of_lab = np.asarray(sig_of_lab).ravel()
    sig_e = sig_of_lab[lab]
    order = np.lexsort((local, lab, space_id, sig_e))
    key = sig_e[order] * n_sp + space_id[order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(key)) + 1, [len(key)]])
    blocks: dict[int, dict[Space, np.ndarray]] = defaultdict(dict)
    for b0, b1 in zip(starts[:-1], starts[1:], strict=True):
        sig, k = divmod(int(key[b0]), n_sp)
        n_units = int(np.count_nonzero(sig_of_lab == sig))
        blocks[sig][spaces[k]] = local[order[b0:b1]].reshape(n_units, int(footprints[sig, k]))
    groups: list[Group] = []
    for sig in sorted(blocks):
        indices = blocks[sig]
        member = list(indices)
        perm = np.argsort(indices[member[0]][:, 0], kind="stable")
        indices = {sp: idx[perm] for sp, idx in indices.items()}
        groups.append(
            Group.build(
                start_id + len(groups), member, indices, sizes, frozen, lossy, params, view, cost,
                kind=_kind({t for sp in member for t in tags.get(sp, ())}),
            )
        )
    return groups
