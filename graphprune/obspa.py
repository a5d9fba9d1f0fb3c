"""OBSPA ("Optimal Brain SPA"): group pruning after training, without fine-tuning or data.

For every consumer of a group's channels (see :mod:`graphprune.hessian`) with weight matrix ``W`` and
damped input statistics ``H + λI`` (λ = ``damp`` · mean diag H), removing channel ``c`` removes its
column set ``Q``:

* saliency  ΔL_c = ½ tr( W[:,Q] (H⁻¹[Q,Q])⁻¹ W[:,Q]ᵀ ), divided by the consumer's output energy
  ½ tr(W Cov(x) Wᵀ) so that layers compare; a group's score sums its consumers;
* update    W ← W − W[:,Q] (H⁻¹[Q,Q])⁻¹ H⁻¹[Q,:]   (equal to the least-squares refit of the kept
  columns, bias column included: :func:`refit`);
* downdate  H⁻¹ ← H⁻¹ − H⁻¹[:,Q] (H⁻¹[Q,Q])⁻¹ H⁻¹[Q,:].

Each group is pruned greedily in ``rounds`` blocks; the removal order becomes strictly increasing
scores, so the usual allocation (local or global, targets) removes a prefix of it.  The weights are
then rewritten once per consumer from the final kept set (:mod:`graphprune.obspa_rewrite`), in graph
order on the inputs of the already pruned model when that is affordable (errors then do not pile up).

H comes from ``stats``: ``natural`` (default, data-free: image-like inputs chosen by the model, or
synthetic token sequences for token-id models, :mod:`graphprune.priors`), ``synthetic`` (Gaussian inputs from the input spec), ``bn-prior`` (no inputs:
BatchNorm moments; consumers without BN in front use ``natural`` and say so) or ``calib`` (an .npz of
real inputs).  Consumers OBSPA cannot model (grouped Conv, ConvTranspose, shared weights) get H = I:
magnitude saliency and no update, reported as ``identity``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphprune.allocation import AllocationOptions, allocate, pool_ratios
from graphprune.analysis import Analysis
from graphprune.errors import InternalError, UsageError
from graphprune.groups import Group
from graphprune.hessian import (
    Consumer,
    Stats,
    collect_stats,
    find_consumers,
    identity_stats,
    session_with_outputs,
)
from graphprune.inputs import load_inputs
from graphprune.norm_priors import bn_prior_stats, ln_prior_stats
from graphprune.priors import (
    Judge,
    PriorChoice,
    bn_statistics,
    classifier_output,
    natural_feeds,
    noise_feeds,
    split_feeds,
)
from graphprune.rules import Space

log = logging.getLogger(__name__)

STATS_MODES = ("natural", "synthetic", "bn-prior", "calib")
DEFAULT_STATS = "natural"  # best data-free mode in benchmarks/quality.py
SELECT_BUDGET = 1e11  # MACs of forward passes to score the prior's candidates
Key = tuple[int, Space]


@dataclass(frozen=True)
class ObspaOptions:
    """``samples``: inputs for H (default from the model's MACs); ``max_block``: features per H block."""

    stats: str = DEFAULT_STATS
    calib: str | None = None
    inputs: str | None = None  # example inputs (.npz): sizes of dynamic input axes for the prior
    samples: int | None = None
    damp: float = 0.01
    max_block: int = 1024
    max_rows: int = 8192
    rounds: int = 32
    seed: int = 0
    propagate: bool | None = None  # refit on inputs of the already pruned model (None: when affordable)

    def __post_init__(self) -> None:
        if self.stats not in STATS_MODES:
            raise UsageError(f"unknown --stats '{self.stats}'; choose one of {', '.join(STATS_MODES)}")
        if self.stats == "calib" and not self.calib:
            raise UsageError("--stats calib needs --calib data.npz")
        if self.samples is not None and self.samples < 1:
            raise UsageError(f"samples must be >= 1, got {self.samples}")
        if not self.damp > 0:
            raise UsageError(f"damp must be > 0, got {self.damp}")


# algebra -----------------------------------------------------------------------------------------
def damped(h: np.ndarray, lam: float) -> np.ndarray:
    return h + lam * np.eye(h.shape[0])


def saliency(w: np.ndarray, hinv: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """½ tr(W_Q (H⁻¹_QQ)⁻¹ W_Qᵀ) for each row ``Q`` of ``cols`` ([n, q] column indices)."""
    cols = np.asarray(cols, dtype=np.int64)
    if cols.size == 0:
        return np.zeros(len(cols))
    wq = np.ascontiguousarray(w[:, cols].transpose(1, 2, 0))  # [n, q, out]
    g = wq @ wq.transpose(0, 2, 1)  # [n, q, q] = W_Qᵀ W_Q per unit
    m = hinv[cols[:, :, None], cols[:, None, :]]
    if cols.shape[1] == 1:
        return np.asarray(0.5 * g[:, 0, 0] / np.maximum(m[:, 0, 0], 1e-300))
    return np.asarray(0.5 * np.einsum("nqp,nqp->n", np.linalg.inv(m), g))


def obs_remove(w: np.ndarray, hinv: np.ndarray, q: np.ndarray) -> None:
    """Remove columns ``q`` in place: OBS update of ``w`` and downdate of ``hinv``."""
    q = np.asarray(q, dtype=np.int64)
    if q.size == 0:
        return
    t = np.linalg.solve(hinv[np.ix_(q, q)], hinv[q, :])
    w -= w[:, q] @ t
    hinv -= hinv[:, q] @ t
    w[:, q] = 0.0
    hinv[q, :] = 0.0
    hinv[:, q] = 0.0


def refit(w: np.ndarray, h: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """min ‖W X − W' X‖² over W' supported on ``keep``: W'_K = W H[:,K] H_KK⁻¹ (H damped)."""
    keep = np.asarray(keep, dtype=np.int64)
    out = np.zeros_like(w)
    if keep.size:
        out[:, keep] = np.linalg.solve(h[np.ix_(keep, keep)], h[keep, :] @ w.T).T
    return out


def output_energy(w: np.ndarray, h: np.ndarray, bias: bool) -> float:
    """½ tr(W Cov Wᵀ): the covariance (not the raw moment) when the last column is the constant 1."""
    cov = h[:-1, :-1] - np.outer(h[:-1, -1], h[:-1, -1]) if bias else h
    wk = w[:, :-1] if bias else w
    return 0.5 * quad(wk, cov, wk)


def quad(a: np.ndarray, h: np.ndarray, b: np.ndarray) -> float:
    """tr(A H Bᵀ) with one matrix product (a 3-operand einsum would loop naively)."""
    return float(np.sum((a @ h) * b))


# per-consumer state --------------------------------------------------------------------------------
@dataclass
class ConsumerState:
    consumer: Consumer
    stats: Stats
    w: list[np.ndarray]  # per block [out, b] with a zero bias column
    lam: float
    energy: float
    _hinv: list[np.ndarray] | None = None

    @staticmethod
    def build(c: Consumer, st: Stats, matrix: np.ndarray, damp: float) -> ConsumerState:
        ws = []
        for c0, c1 in st.blocks:
            wb = matrix[:, c0 * c.k:c1 * c.k]
            ws.append(np.concatenate([wb, np.zeros((wb.shape[0], 1))], axis=1) if st.bias else wb.copy())
        diag = np.concatenate([np.diag(h) for h in st.h])
        lam = damp * float(diag.mean()) if diag.size and diag.mean() > 0 else damp
        energy = sum(output_energy(wb, h, st.bias) for wb, h in zip(ws, st.h, strict=True))
        return ConsumerState(c, st, ws, lam, max(energy, 1e-30))

    def hinv(self, bi: int) -> np.ndarray:
        if self._hinv is None:
            self._hinv = [np.linalg.inv(damped(h, self.lam)) for h in self.stats.h]
        return self._hinv[bi]

    def block_of(self, channels: np.ndarray) -> np.ndarray:
        starts = np.array([c0 for c0, _ in self.stats.blocks])
        return np.searchsorted(starts, channels, side="right") - 1


@dataclass
class _Block:
    w: np.ndarray
    hinv: np.ndarray
    energy: float
    units: np.ndarray  # units with channels here
    cols: np.ndarray  # [len(units), q] local columns


def _member_blocks(group: Group, space: Space, cs: ConsumerState) -> list[_Block]:
    k = cs.consumer.k
    chans = group.indices[space]
    blocks_of = cs.block_of(chans.ravel()).reshape(chans.shape)
    out = []
    for bi, (c0, _) in enumerate(cs.stats.blocks):
        here = blocks_of == bi
        counts = here.sum(axis=1)
        for q in sorted(set(counts[counts > 0].tolist())):
            units = np.flatnonzero(counts == q)
            ch = chans[units][here[units]].reshape(len(units), q) - c0
            cols = (ch[:, :, None] * k + np.arange(k)).reshape(len(units), q * k)
            out.append(_Block(cs.w[bi].copy(), cs.hinv(bi).copy(), cs.energy, units, cols))
    return out


def greedy_order(group: Group, members: list[tuple[Space, ConsumerState]], target: int, rounds: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Removal order of ``target`` units and each one's normalised saliency when it went."""
    n = group.n_units
    blocks = [b for space, cs in members for b in _member_blocks(group, space, cs)]
    alive = np.ones(n, dtype=bool)
    order: list[int] = []
    inc: list[float] = []
    step = max(1, math.ceil(target / max(rounds, 1)))
    while len(order) < target:
        s = np.zeros(n)
        for b in blocks:
            live = alive[b.units]
            s[b.units[live]] += saliency(b.w, b.hinv, b.cols[live]) / b.energy
        cand = np.flatnonzero(alive)
        pick = cand[np.lexsort((cand, s[cand]))][:min(step, target - len(order))]
        order.extend(pick.tolist())
        inc.extend(s[pick].tolist())
        alive[pick] = False
        gone = np.zeros(n, dtype=bool)
        gone[pick] = True
        for b in blocks:
            sel = gone[b.units]
            if sel.any():
                obs_remove(b.w, b.hinv, b.cols[sel].ravel())
    return np.asarray(order, dtype=np.int64), np.asarray(inc)


def order_scores(n: int, order: np.ndarray, inc: np.ndarray, rest: np.ndarray | None = None) -> np.ndarray:
    """Strictly increasing scores along ``order`` (cumulative max of increments, ties broken by
    position); units never removed score above all of them."""
    scores = np.zeros(n)
    top = 0.0
    if order.size:
        mono = np.maximum.accumulate(np.maximum(inc, 0.0))
        eps = 1e-9 * max(float(mono[-1]), 1e-30)
        scores[order] = mono + eps * np.arange(order.size)
        top = float(scores[order].max())
    left = np.setdiff1d(np.arange(n), order)
    if left.size:
        r = np.zeros(left.size) if rest is None else np.asarray(rest, dtype=np.float64)[left]
        scores[left] = top + 1.0 + np.argsort(np.argsort(r, kind="stable"), kind="stable")
    return scores


# driver ----------------------------------------------------------------------------------------------
@dataclass
class ObspaScoring:
    """Scores for allocation plus everything the rewrite needs."""

    scores: dict[int, np.ndarray]
    consumers: dict[Key, ConsumerState]
    group_consumers: dict[int, list[Key]]
    group_modes: dict[int, str]
    prior: PriorChoice | None
    options: ObspaOptions
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    samples: int = 0
    feeds: list[dict[str, np.ndarray]] = field(default_factory=list, repr=False)  # inputs behind H

    @property
    def stats_bytes(self) -> int:
        return sum(cs.stats.nbytes for cs in self.consumers.values())

    def mode_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for cs in self.consumers.values():
            out[cs.stats.mode] = out.get(cs.stats.mode, 0) + 1
        return out


def _targets(analysis: Analysis, opts: AllocationOptions) -> dict[int, int]:
    """Units each group may lose: exact counts where the ratio is local, the cap where groups are
    ranked globally (any of them may lose up to it)."""
    zeros = {g.id: np.zeros(g.n_units) for g in analysis.groups if g.n_units}
    ranked = pool_ratios(analysis, opts)
    alloc = allocate(analysis, zeros, opts)
    out = {}
    for g in analysis.groups:
        d = alloc.decisions.get(g.id)
        if g.id in ranked and g.n_units > 1 and ranked[g.id] != 0.0:
            out[g.id] = max(min(math.floor(opts.max_ratio * g.n_units + 1e-9), g.n_units - 1), 0)
        elif d is not None and d.removed > 0:
            out[g.id] = d.removed
    return {gid: t for gid, t in out.items() if t > 0}


def default_samples(macs: int) -> int:
    """Enough inputs for H on small models, bounded work on large ones (~1e11 MACs of forward passes)."""
    return int(min(256, max(32, 1e11 // max(macs, 1))))


def obspa_scores(analysis: Analysis, alloc_opts: AllocationOptions, opts: ObspaOptions) -> ObspaScoring:
    """Collect statistics for the consumers of every group that will lose units, and score the groups."""
    t0 = time.perf_counter()
    view = analysis.view
    targets = _targets(analysis, alloc_opts)
    by_id = {g.id: g for g in analysis.groups}
    all_consumers = find_consumers(analysis)
    group_keys: dict[int, list[Key]] = {}
    for gid in targets:
        g = by_id[gid]
        group_keys[gid] = [(p.node, p.space) for p in g.params if p.role == "in" and (p.node, p.space) in all_consumers]
        group_keys[gid] = list(dict.fromkeys(group_keys[gid]))
    needed = list(dict.fromkeys(k for ks in group_keys.values() for k in ks))
    stats, prior, samples, warnings, feeds = gather_stats(analysis, [all_consumers[k] for k in needed], opts)
    seconds = {"stats": time.perf_counter() - t0}
    t1 = time.perf_counter()
    states = {k: ConsumerState.build(all_consumers[k], stats[i], all_consumers[k].matrix(view), opts.damp)
              for i, k in enumerate(needed)}
    scores: dict[int, np.ndarray] = {}
    modes: dict[int, str] = {}
    for g in analysis.groups:
        if g.frozen or g.n_units <= 1:
            continue
        keys = group_keys.get(g.id, [])
        if g.id not in targets:
            scores[g.id] = np.arange(g.n_units, dtype=np.float64) + 1.0  # never pruned: any order
            continue
        if not keys:
            scores[g.id] = _producer_scores(g, analysis)
            modes[g.id] = "no consumer: producer L2"
            continue
        members = [(k[1], states[k]) for k in keys]
        order, inc = greedy_order(g, members, targets[g.id], opts.rounds)
        scores[g.id] = order_scores(g.n_units, order, inc)
        modes[g.id] = "+".join(sorted({states[k].stats.mode for k in keys}))
    seconds["greedy"] = time.perf_counter() - t1
    return ObspaScoring(scores, states, group_keys, modes, prior, opts, seconds, warnings, samples, feeds)


def _producer_scores(g: Group, analysis: Analysis) -> np.ndarray:
    total = np.zeros(g.n_units)
    for p in g.params:
        if p.role != "out":
            continue
        w = analysis.view.constant_value(p.space.tensor)
        if w is None:
            continue
        sl = np.moveaxis(np.take(np.asarray(w, np.float64), g.indices[p.space].ravel(), axis=p.space.axis),
                         p.space.axis, 0).reshape(g.n_units, -1)
        e = np.square(sl).sum(axis=1)
        total += e / max(float(e.sum()), 1e-30)
    return total


Feeds = list[dict[str, np.ndarray]]


def gather_stats(analysis: Analysis, consumers: list[Consumer], opts: ObspaOptions
                 ) -> tuple[list[Stats], PriorChoice | None, int, list[str], Feeds]:
    """H for every consumer, from the chosen mode; identity (no update) where none can be had."""
    view = analysis.view
    kw: dict[str, Any] = {"max_block": opts.max_block, "max_rows": opts.max_rows, "seed": opts.seed}
    out: list[Stats | None] = [None] * len(consumers)
    warnings: list[str] = []
    todo = []
    for i, c in enumerate(consumers):
        if c.unsupported is not None:
            out[i] = identity_stats(c, opts.max_block, c.unsupported)
        elif opts.stats == "bn-prior":
            out[i] = bn_prior_stats(c, view, opts.max_block) or ln_prior_stats(c, view, opts.max_block)
            if out[i] is None:
                todo.append(i)
        else:
            todo.append(i)
    prior: PriorChoice | None = None
    n = opts.samples or default_samples(analysis.cost.macs)
    feeds: Feeds = []
    if todo:
        mode = opts.stats
        if mode == "calib":
            feeds = list(split_feeds(load_inputs(opts.calib, view)))  # type: ignore[arg-type]
        elif mode == "synthetic":
            feeds = noise_feeds(view, n, opts.seed)
        else:
            like = load_inputs(opts.inputs, view) if opts.inputs else None
            feeds, prior = prior_feeds(analysis, n, opts.seed, like)
            if mode == "bn-prior":
                mode = "natural (no BN in front)"
                warnings.append(f"bn-prior: {len(todo)} consumer(s) have no BatchNormalization (or LayerNorm -> "
                                f"linear) in front; their statistics come from the data-free prior")
            else:
                mode = "natural"
        got = collect_stats(view, [consumers[i] for i in todo], feeds, mode, **kw)
        for j, i in enumerate(todo):
            out[i] = got[j]
    if any(s is None for s in out):
        raise InternalError("OBSPA: a consumer was left without statistics")
    return [s for s in out if s is not None], prior, n, warnings, feeds


def prior_feeds(analysis: Analysis, n: int, seed: int, like: dict[str, np.ndarray] | None = None
                ) -> tuple[list[dict[str, np.ndarray]], PriorChoice]:
    """``n`` data-free inputs chosen by the model (image-like, or synthetic token sequences)."""
    view = analysis.view
    bn = bn_statistics(view)
    sess = session_with_outputs(view.model, view, [t for t, _, _ in bn])

    def run(feed: dict[str, np.ndarray], fetch: list[str]) -> list[np.ndarray]:
        return [np.asarray(v) for v in sess.run(fetch, feed)]

    judge = Judge(run, classifier_output(view), bn)
    macs = max(analysis.cost.macs, 1)
    trial = int(min(64, max(2, SELECT_BUDGET // (9 * macs))))  # 9 candidates are scored
    pool = 4 if macs < 1e9 else 1  # confident-per-class selection from a 4x pool on small models
    return natural_feeds(view, n, seed, judge, trial=trial, pool_factor=pool, like=like)
