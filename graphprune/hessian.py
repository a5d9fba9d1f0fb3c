"""Second-order statistics for OBSPA: the *consumers* of pruned channels and H = E[x xᵀ] for each.

A consumer is a node whose weight reads a group's channels as input features (Conv with group=1,
Gemm, MatMul with a constant 2-D right operand).  Its weight is seen as a matrix ``W[out, d]`` over
im2col features (channel-major: column ``c*k + r`` for kernel offset ``r``), plus a last constant-1
column for the bias when the graph has a place for one (:class:`BiasSlot`).

H is kept block-diagonal over contiguous channel ranges of at most ``max_block`` features (each block
with its own bias column), so memory and the cubic work stay bounded on wide layers; a consumer that
fits one block is exact.  Statistics come from model inputs run through ONNX Runtime
(:func:`collect_stats`, im2col rows subsampled) or, without any input, from BatchNormalization moments
(:func:`graphprune.norm_priors.bn_prior_stats`).  Everything accumulates in float64.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from graphprune.analysis import Analysis
from graphprune.errors import GraphpruneError
from graphprune.graph import GraphView
from graphprune.rules import Space

log = logging.getLogger(__name__)

Feed = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class BiasSlot:
    """Where a consumer's bias lives: ``kind`` conv | gemm | add | none; ``tensor`` None = add one."""

    kind: str
    tensor: str | None = None
    scale: float = 1.0  # Gemm beta: the stored C is bias / beta
    shape: tuple[int, ...] | None = None
    why: str = ""

    @property
    def usable(self) -> bool:
        return self.kind != "none"


@dataclass(frozen=True)
class ConvGeom:
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right (auto_pad resolved per input size)
    auto_pad: str
    rank1: bool  # a 1-D conv viewed as 2-D with height 1


@dataclass(frozen=True)
class Consumer:
    node: int
    name: str
    op: str
    weight: str
    space: Space  # the weight axis that reads input channels
    x: str  # the activation it reads
    n_in: int
    n_out: int
    k: int  # features per input channel (kernel size for Conv)
    bias: BiasSlot
    alpha: float = 1.0  # Gemm alpha
    trans_b: bool = False  # Gemm transB
    conv: ConvGeom | None = None
    unsupported: str | None = None  # why no H can be collected: identity H, no update

    @property
    def features(self) -> int:
        return self.n_in * self.k

    def blocks(self, max_block: int) -> list[tuple[int, int]]:
        """Contiguous channel ranges of about equal size with at most ``max_block`` features each."""
        n_blocks = max(1, math.ceil(self.features / max(max_block, self.k)))
        per = math.ceil(self.n_in / n_blocks)
        return [(c, min(c + per, self.n_in)) for c in range(0, self.n_in, per)]

    def matrix(self, view: GraphView) -> np.ndarray:
        """The weight as ``[out, n_in * k]`` float64 (Gemm alpha folded in)."""
        w = np.asarray(view.constant_value(self.weight), dtype=np.float64)
        if self.unsupported is not None:  # any layout: one column per input channel
            return np.ascontiguousarray(np.moveaxis(w, self.space.axis, -1).reshape(-1, self.n_in))
        if self.op == "Conv":
            return w.reshape(w.shape[0], -1)
        if self.op == "Gemm":
            return self.alpha * (w if self.trans_b else w.T)
        return np.ascontiguousarray(w.T)

    def stored(self, matrix: np.ndarray, like: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`matrix`: back to the stored layout and dtype of ``like``."""
        if self.op == "Conv":
            out = matrix.reshape(like.shape)
        elif self.op == "Gemm":
            out = (matrix if self.trans_b else matrix.T) / self.alpha
        else:
            out = matrix.T
        return np.ascontiguousarray(out).astype(like.dtype)

    def bias_vector(self, view: GraphView) -> np.ndarray:
        """The current effective bias ``[out]`` (zeros when the slot is empty or unusable)."""
        if not self.bias.usable or self.bias.tensor is None:
            return np.zeros(self.n_out)
        b = np.asarray(view.constant_value(self.bias.tensor), dtype=np.float64).reshape(-1)
        return self.bias.scale * (np.broadcast_to(b, (self.n_out,)) if b.size == 1 else b)


# discovery ---------------------------------------------------------------------------------------
def find_consumers(analysis: Analysis) -> dict[tuple[int, Space], Consumer]:
    """Every ("in") consumer parameter of a non-frozen group, keyed by (node, weight axis)."""
    view = analysis.view
    out: dict[tuple[int, Space], Consumer] = {}
    for g in analysis.groups:
        if g.frozen or not g.indices:
            continue
        for p in g.params:
            if p.role == "in" and (p.node, p.space) not in out and p.space in g.indices:
                out[(p.node, p.space)] = describe_consumer(view, p.node, p.space)
    return out


def _static(view: GraphView, t: str) -> tuple[int, ...]:
    """Static dims of ``t`` (unknown ones as 0)."""
    return tuple(d if isinstance(d, int) else 0 for d in (view.shape(t) or ()))


def describe_consumer(view: GraphView, i: int, space: Space) -> Consumer:
    """How node ``i`` reads channels through weight axis ``space`` (``unsupported`` says why not)."""
    node = view.nodes[i]
    op = node.op_type
    w = space.tensor
    ws = _static(view, w)
    shared = [j for j in view.consumers.get(w, []) if j != i]

    def make(n_out: int, k: int, bias: BiasSlot, **kw: Any) -> Consumer:
        return Consumer(node=i, name=view.node_names[i], op=op, weight=w, space=space, x=node.input[0],
                        n_in=ws[space.axis] if space.axis < len(ws) else 0, n_out=n_out, k=k, bias=bias, **kw)

    def unsupported(why: str) -> Consumer:
        rest = math.prod(d for a, d in enumerate(ws) if a != space.axis)
        return make(rest, 1, BiasSlot("none", why=why), unsupported=why)

    supported = (
        (op == "Conv" and node.input[1] == w and space.axis == 1 and len(ws) in (3, 4))
        or (op == "Gemm" and node.input[1] == w and len(ws) == 2 and not view.is_constant(node.input[0]))
        or (op == "MatMul" and node.input[1] == w and len(ws) == 2 and not view.is_constant(node.input[0]))
    )
    if not supported:
        return unsupported(f"{op} input channels (no im2col statistics for this form)")
    if shared:
        return unsupported(f"weight '{w}' is shared with {len(shared)} other node(s)")
    if op == "Conv":
        if _int_attr(view, i, "group", 1) != 1:
            return unsupported("grouped Conv")
        return make(ws[0], math.prod(ws[2:]), _conv_bias(view, i), conv=_geom(view, i, ws))
    if op == "Gemm":
        if _int_attr(view, i, "transA", 0):
            return unsupported("Gemm with transA")
        tb = bool(_int_attr(view, i, "transB", 0))
        n_out = ws[0] if tb else ws[1]
        return make(n_out, 1, _gemm_bias(view, i, n_out), alpha=_float_attr(view, i, "alpha", 1.0), trans_b=tb)
    return make(ws[1], 1, _matmul_bias(view, i, ws[1]))


def _int_attr(view: GraphView, i: int, name: str, default: int) -> int:
    v = view.attr(i, name, default)
    return int(v) if isinstance(v, int | float) else default


def _float_attr(view: GraphView, i: int, name: str, default: float) -> float:
    v = view.attr(i, name, default)
    return float(v) if isinstance(v, int | float) else default


def _single_use_constant(view: GraphView, t: str) -> bool:
    return view.is_constant(t) and len(view.consumers.get(t, [])) == 1 and not view.is_graph_output(t)


def _conv_bias(view: GraphView, i: int) -> BiasSlot:
    node = view.nodes[i]
    if len(node.input) > 2 and node.input[2]:
        b = node.input[2]
        if _single_use_constant(view, b):
            return BiasSlot("conv", b, shape=_static(view, b))
        return BiasSlot("none", why=f"Conv bias '{b}' is computed or shared")
    return BiasSlot("conv")


def _gemm_bias(view: GraphView, i: int, n_out: int) -> BiasSlot:
    node = view.nodes[i]
    beta = _float_attr(view, i, "beta", 1.0)
    if len(node.input) > 2 and node.input[2]:
        c = node.input[2]
        shape = _static(view, c)
        if beta == 0.0 or not _single_use_constant(view, c) or shape not in ((n_out,), (1, n_out)):
            return BiasSlot("none", why=f"Gemm C '{c}' is not a per-output constant")
        return BiasSlot("gemm", c, scale=beta, shape=shape)
    return BiasSlot("gemm", None, scale=beta if beta != 0.0 else 1.0)


def _matmul_bias(view: GraphView, i: int, n_out: int) -> BiasSlot:
    y = view.nodes[i].output[0]
    users = view.consumers.get(y, [])
    if len(users) == 1 and not view.is_graph_output(y) and view.nodes[users[0]].op_type == "Add":
        add = view.nodes[users[0]]
        other = add.input[1] if add.input[0] == y else add.input[0]
        shape = _static(view, other)
        if (_single_use_constant(view, other) and shape and shape[-1] == n_out
                and all(d == 1 for d in shape[:-1])):
            return BiasSlot("add", other, shape=shape)
    return BiasSlot("none", why="no per-channel constant Add after the MatMul")


def _geom(view: GraphView, i: int, wshape: tuple[int, ...]) -> ConvGeom:
    rank1 = len(wshape) == 3

    def ints(name: str, default: list[int]) -> list[int]:
        v = view.attr(i, name, None)
        return [int(a) for a in v] if isinstance(v, list | tuple) and v else default

    ks = list(wshape[2:])
    nsp = len(ks)
    strides, dil = ints("strides", [1] * nsp), ints("dilations", [1] * nsp)
    pads = ints("pads", [0] * 2 * nsp)
    raw = view.attr(i, "auto_pad", b"NOTSET")
    auto = raw.decode() if isinstance(raw, bytes) else str(raw)
    if rank1:
        return ConvGeom((1, ks[0]), (1, strides[0]), (1, dil[0]), (0, pads[0], 0, pads[1]), auto, True)
    return ConvGeom((ks[0], ks[1]), (strides[0], strides[1]), (dil[0], dil[1]),
                    (pads[0], pads[1], pads[2], pads[3]), auto, False)


# features ----------------------------------------------------------------------------------------
def _resolved_pads(g: ConvGeom, h: int, w: int) -> tuple[int, int, int, int]:
    if g.auto_pad in ("NOTSET", ""):
        return g.pads
    if g.auto_pad == "VALID":
        return (0, 0, 0, 0)
    out = []
    for size, k, s, d in ((h, g.kernel[0], g.strides[0], g.dilations[0]), (w, g.kernel[1], g.strides[1], g.dilations[1])):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        out.append((big, small) if g.auto_pad == "SAME_LOWER" else (small, big))
    return (out[0][0], out[1][0], out[0][1], out[1][1])


def feature_rows(c: Consumer, x: np.ndarray, rows: int, rng: np.random.Generator) -> Callable[[int, int], np.ndarray]:
    """A function ``(c0, c1) -> [r, (c1 - c0) * k]`` float32 of up to ``rows`` sampled input rows."""
    if c.conv is not None:
        g = c.conv
        if g.rank1:
            x = x[:, :, None, :]
        n, _, h, w = x.shape
        pt, pl, pb, pr = _resolved_pads(g, h, w)
        xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if (pt or pl or pb or pr) else x
        (kh, kw), (sh, sw), (dh, dw) = g.kernel, g.strides, g.dilations
        oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
        ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
        total = n * oh * ow
        idx = np.sort(rng.choice(total, size=rows, replace=False)) if total > rows else np.arange(total)
        ni, rem = np.divmod(idx, oh * ow)
        hi, wi = np.divmod(rem, ow)
        hh = (hi[:, None] * sh + np.arange(kh) * dh)[:, :, None]
        ww = (wi[:, None] * sw + np.arange(kw) * dw)[:, None, :]
        nn_ = ni[:, None, None]

        def conv_rows(c0: int, c1: int) -> np.ndarray:
            patches = xp[:, c0:c1][nn_, :, hh, ww]  # [r, kh, kw, C]
            return np.ascontiguousarray(patches.transpose(0, 3, 1, 2)).reshape(len(idx), -1).astype(np.float32)

        return conv_rows
    flat = x.reshape(-1, x.shape[-1])
    if flat.shape[0] > rows:
        flat = flat[np.sort(rng.choice(flat.shape[0], size=rows, replace=False))]
    return lambda c0, c1: np.asarray(flat[:, c0:c1], dtype=np.float32)


# statistics --------------------------------------------------------------------------------------
@dataclass
class Stats:
    """Block-diagonal H = E[x xᵀ] of one consumer (float64), each block ending in the bias column."""

    blocks: list[tuple[int, int]]
    h: list[np.ndarray]
    bias: bool
    mode: str
    rows: int = 0
    notes: list[str] = field(default_factory=list)

    def finish(self) -> Stats:
        if self.rows:
            self.h = [m / self.rows for m in self.h]
        return self

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.h)


def empty_stats(c: Consumer, max_block: int, mode: str) -> Stats:
    blocks = c.blocks(max_block)
    b = int(c.bias.usable)
    return Stats(blocks, [np.zeros(((c1 - c0) * c.k + b,) * 2) for c0, c1 in blocks], bool(b), mode)


def identity_stats(c: Consumer, max_block: int, why: str) -> Stats:
    """H = I without a bias column: saliency becomes the column norm, the update a no-op."""
    blocks = c.blocks(max_block)
    return Stats(blocks, [np.eye((c1 - c0) * c.k) for c0, c1 in blocks], False, "identity", notes=[why])


_FLUSH_ELEMENTS = 1 << 22  # buffered feature values per consumer before a product (16 MB)
FETCH_BYTES = 256 << 20  # exposed activations per model run


def _slices(feed: Feed, step: int) -> list[dict[str, np.ndarray]]:
    n = min((v.shape[0] for v in feed.values() if v.ndim), default=1)
    return [{k: v[i:i + step] for k, v in feed.items()} for i in range(0, n, step)]


@dataclass
class _Buffer:
    """Sampled feature rows waiting for one large float32 product (small products are slow)."""

    parts: list[list[np.ndarray]]
    rows: int = 0


def accumulate(st: Stats, c: Consumer, x: np.ndarray, rows: int, rng: np.random.Generator,
               buf: _Buffer | None = None) -> None:
    """Add up to ``rows`` sampled rows of ``x`` to ``st`` (buffered when ``buf`` is given)."""
    get = feature_rows(c, np.asarray(x, dtype=np.float32), rows, rng)
    own = buf or _Buffer([[] for _ in st.blocks])
    for bi, (c0, c1) in enumerate(st.blocks):
        f = get(c0, c1)
        own.parts[bi].append(f)
        if bi == 0:
            own.rows += f.shape[0]
    if buf is None or own.rows * (c.features + 1) >= _FLUSH_ELEMENTS:
        flush(st, own)


def flush(st: Stats, buf: _Buffer) -> None:
    for bi, parts in enumerate(buf.parts):
        if not parts:
            continue
        f = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if st.bias:
            f = np.concatenate([f, np.ones((f.shape[0], 1), np.float32)], axis=1)
        st.h[bi] += (f.T @ f).astype(np.float64)  # float32 product of a bounded chunk, float64 sum
        parts.clear()
    st.rows += buf.rows
    buf.rows = 0


def session_with_outputs(model: onnx.ModelProto, view: GraphView, fetch: Iterable[str]):
    """An ONNX Runtime CPU session over a copy of ``model`` that also returns ``fetch``."""
    from graphprune.verify import session

    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    for t in dict.fromkeys(fetch):
        if t not in present and t not in view.graph_inputs:
            m.graph.output.append(helper.make_tensor_value_info(t, view.dtypes.get(t, onnx.TensorProto.FLOAT), None))
    try:
        return session(m)  # external weights: ORT reads them from files beside a saved copy
    except Exception as e:  # noqa: BLE001 - ORT raises many types
        raise GraphpruneError(f"ONNX Runtime cannot load the model to collect OBSPA statistics: {e}") from e


def collect_stats(
    view: GraphView,
    consumers: list[Consumer],
    feeds: list[dict[str, np.ndarray]],
    mode: str,
    *,
    max_block: int,
    max_rows: int,
    seed: int,
) -> dict[int, Stats]:
    """Run every feed once with the consumers' inputs exposed; H per consumer (index into ``consumers``)."""
    if not feeds:
        raise GraphpruneError("OBSPA statistics need at least one input batch")
    stats = {k: empty_stats(c, max_block, mode) for k, c in enumerate(consumers)}
    fetch = sorted({c.x for c in consumers if c.x not in view.graph_inputs})
    sess = session_with_outputs(view.model, view, fetch) if fetch else None
    per_sample = sum(4 * math.prod(_static(view, t)[1:]) for t in fetch)
    step = max(1, FETCH_BYTES // max(per_sample, 1))  # bound the memory of exposed activations
    batches = [sub for f in feeds for sub in _slices(f, step)]
    rows = max(1, math.ceil(max_rows / len(batches)))
    rng = np.random.default_rng(seed)
    bufs = {k: _Buffer([[] for _ in st.blocks]) for k, st in stats.items()}
    for feed in batches:
        values = dict(zip(fetch, sess.run(fetch, feed), strict=True)) if sess is not None else {}
        for k, c in enumerate(consumers):
            x = values[c.x] if c.x in values else feed[c.x]
            accumulate(stats[k], c, x, rows, rng, bufs[k])
        del values
    for k, st in stats.items():
        flush(st, bufs[k])
    return {k: s.finish() for k, s in stats.items()}
