"""Statistics without any input (``--stats bn-prior``): a consumer's H from the normalisation in front.

A consumer fed by act(BatchNormalization) gets per-channel moments from BN's beta and gamma pushed
through the activation (numerically, so ReLU, ReLU6/Clip, HardSwish, SiLU, GELU... all work), with
independent channels: H = diag(var) + m mᵀ (:func:`bn_prior_stats`).  Transformer FFNs get the same
from LayerNorm's gamma and beta (:func:`ln_prior_stats`): the pre-activation after the up projection is
Gaussian with a full covariance, pushed through the graph's own element-wise activation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from graphprune.graph import GraphView
from graphprune.hessian import Consumer, Stats, empty_stats

# BatchNorm prior (no inputs at all) ----------------------------------------------------------------
_GRID = np.linspace(-10.0, 10.0, 4001)
_PDF = np.exp(-0.5 * _GRID**2) / math.sqrt(2 * math.pi) * (_GRID[1] - _GRID[0])


def _activation(view: GraphView, i: int) -> Callable[[np.ndarray], np.ndarray] | None:
    """The element-wise function of node ``i`` when it is a known activation of one tensor."""
    n = view.nodes[i]
    op = n.op_type
    if op == "Relu":
        return lambda y: np.maximum(y, 0.0)
    if op == "Clip":
        lo = view.constant_value(n.input[1]) if len(n.input) > 1 and n.input[1] else view.attr(i, "min", None)
        hi = view.constant_value(n.input[2]) if len(n.input) > 2 and n.input[2] else view.attr(i, "max", None)
        a = -np.inf if lo is None else float(np.asarray(lo))
        b = np.inf if hi is None else float(np.asarray(hi))
        return lambda y: np.clip(y, a, b)
    if op == "HardSwish":
        return lambda y: y * np.clip(y / 6.0 + 0.5, 0.0, 1.0)
    if op == "LeakyRelu":
        alpha = float(view.attr(i, "alpha", 0.01))  # type: ignore[arg-type]
        return lambda y: np.where(y > 0, y, alpha * y)
    if op == "Sigmoid":
        return lambda y: 1.0 / (1.0 + np.exp(-y))
    if op == "Gelu":
        from math import erf

        verf = np.vectorize(erf)
        return lambda y: 0.5 * y * (1.0 + verf(y / math.sqrt(2.0)))
    return None


def _bn_source(view: GraphView, x: str) -> tuple[int, Callable[[np.ndarray], np.ndarray]] | None:
    """(BatchNormalization node, activation) when ``x`` = act(BN(.)) or BN(.), act possibly SiLU."""
    ident: Callable[[np.ndarray], np.ndarray] = lambda y: y  # noqa: E731
    p = view.producer.get(x)
    if p is None:
        return None
    n = view.nodes[p]
    if n.op_type == "BatchNormalization" and len(n.output) == 1:
        return p, ident
    if n.op_type == "Mul" and len(n.input) == 2:  # SiLU: y * Sigmoid(y)
        for a, b in ((n.input[0], n.input[1]), (n.input[1], n.input[0])):
            q = view.producer.get(b)
            if q is not None and view.nodes[q].op_type == "Sigmoid" and view.nodes[q].input[0] == a:
                r = view.producer.get(a)
                if r is not None and view.nodes[r].op_type == "BatchNormalization":
                    return r, lambda y: y / (1.0 + np.exp(-y))
        return None
    act = _activation(view, p)
    if act is None:
        return None
    q = view.producer.get(n.input[0])
    if q is not None and view.nodes[q].op_type == "BatchNormalization" and len(view.nodes[q].output) == 1:
        return q, act
    return None


def bn_moments(view: GraphView, x: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel (mean, E[x²]) of ``x`` if it is act(BN(z)) with BN(z) ~ N(beta, gamma²)."""
    src = _bn_source(view, x)
    if src is None:
        return None
    bn, act = src
    gamma = view.constant_value(view.nodes[bn].input[1])
    beta = view.constant_value(view.nodes[bn].input[2])
    if gamma is None or beta is None:
        return None
    mu = np.asarray(beta, dtype=np.float64).reshape(-1, 1)
    sd = np.abs(np.asarray(gamma, dtype=np.float64)).reshape(-1, 1)
    y = act(mu + sd * _GRID[None, :])
    return (y * _PDF).sum(axis=1), (y * y * _PDF).sum(axis=1)


def bn_prior_stats(c: Consumer, view: GraphView, max_block: int) -> Stats | None:
    """H from independent channels with BN-derived moments: diag(var) + m mᵀ (None without BN)."""
    if c.unsupported is not None:
        return None
    mom = bn_moments(view, c.x)
    if mom is None or len(mom[0]) != c.n_in:
        return None
    mean, second = mom
    var = np.maximum(second - mean**2, 0.0)
    st = empty_stats(c, max_block, "bn-prior")
    for bi, (c0, c1) in enumerate(st.blocks):
        m = np.repeat(mean[c0:c1], c.k)
        v = np.repeat(var[c0:c1], c.k)
        if st.bias:
            m = np.concatenate([m, [1.0]])
            v = np.concatenate([v, [0.0]])
        st.h[bi] = np.outer(m, m) + np.diag(v)
    return st


# LayerNorm prior (transformers: no inputs either) --------------------------------------------------
_HERMITE_T, _HERMITE_W = np.polynomial.hermite_e.hermegauss(96)
_HERMITE_W = _HERMITE_W / math.sqrt(2 * math.pi)  # E[f(t)], t ~ N(0, 1)  ≈  Σ w f(t)
_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Pow": np.power,
    "Max": np.maximum, "Min": np.minimum,
}
_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Tanh": np.tanh, "Neg": np.negative, "Abs": np.abs, "Exp": np.exp, "Sqrt": np.sqrt,
}


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to ~1e-7 (Abramowitz & Stegun 7.1.26), vectorised."""
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.asarray(s * (1.0 - poly * np.exp(-a * a)))


def _pointwise(view: GraphView, x: str, u: str, values: np.ndarray, depth: int = 0) -> np.ndarray | None:
    """``x`` evaluated as an element-wise function of ``u`` at ``values`` ([F, G]: per channel, per
    point), through scalar or per-channel constants and known activations; None if it is not one."""
    if x == u:
        return values
    if view.is_constant(x):
        c = view.constant_value(x)
        if c is None:
            return None
        c = np.asarray(c, dtype=np.float64)
        if c.size == 1:
            return np.asarray(c.ravel()[0])
        return c.reshape(-1, 1) if c.size == values.shape[0] else None
    p = view.producer.get(x)
    if p is None or depth > 12:
        return None
    n = view.nodes[p]
    ins = [i for i in n.input if i]
    if n.op_type in _BINARY and len(ins) == 2:
        a, b = (_pointwise(view, t, u, values, depth + 1) for t in ins)
        return None if a is None or b is None else _BINARY[n.op_type](a, b)
    if n.op_type == "Erf" or n.op_type in _UNARY:
        a = _pointwise(view, ins[0], u, values, depth + 1)
        return None if a is None else (_erf(a) if n.op_type == "Erf" else _UNARY[n.op_type](a))
    act = _activation(view, p)
    if act is not None:
        a = _pointwise(view, ins[0], u, values, depth + 1)
        return None if a is None else act(a)
    return None


def _leaves(view: GraphView, x: str, depth: int = 0) -> set[str] | None:
    """Non-constant tensors an element-wise chain ending in ``x`` starts from."""
    if view.is_constant(x):
        return set()
    p = view.producer.get(x)
    if p is None or depth > 12:
        return {x}
    n = view.nodes[p]
    if not (n.op_type in _BINARY or n.op_type in _UNARY or n.op_type == "Erf" or _activation(view, p) is not None):
        return {x}
    out: set[str] = set()
    for i in n.input:
        if i:
            got = _leaves(view, i, depth + 1)
            if got is None:
                return None
            out |= got
    return out


def _ln_linear_source(view: GraphView, x: str) -> tuple[int, np.ndarray, np.ndarray, str] | None:
    """(norm node, W [H, F], bias [F], u) when ``x`` = f(u) element-wise, u = LayerNorm(.) @ W (+ b)."""
    leaves = _leaves(view, x)
    if not leaves or len(leaves) != 1:
        return None
    u = next(iter(leaves))
    p = view.producer.get(u)
    if p is None:
        return None
    node, bias = view.nodes[p], None
    if node.op_type == "Add":
        consts = [t for t in node.input if view.is_constant(t)]
        others = [t for t in node.input if not view.is_constant(t)]
        if len(consts) != 1 or len(others) != 1 or view.producer.get(others[0]) is None:
            return None
        bias = np.asarray(view.constant_value(consts[0]), dtype=np.float64).ravel()
        node = view.nodes[view.producer[others[0]]]
    if node.op_type != "MatMul" or not view.is_constant(node.input[1]):
        return None
    w = view.constant_value(node.input[1])
    q = view.producer.get(node.input[0])
    if w is None or w.ndim != 2 or q is None or view.nodes[q].op_type not in ("LayerNormalization", "RMSNormalization"):
        return None
    rank = view.rank(node.input[0]) or 0
    axis = int(view.attr(q, "axis", -1))  # type: ignore[call-overload]
    if axis not in (-1, rank - 1):
        return None
    b = np.zeros(w.shape[1]) if bias is None else np.broadcast_to(bias, (w.shape[1],)).astype(np.float64)
    return q, np.asarray(w, dtype=np.float64), b, u


def ln_prior_stats(c: Consumer, view: GraphView, max_block: int) -> Stats | None:
    """H for a consumer fed by f(LayerNorm(z) @ W + b) with no inputs at all.

    The normalised features are taken as independent N(β, γ²) (LayerNorm's own affine), so the
    pre-activation u is Gaussian with mean Wᵀβ + b and covariance C = Wᵀ diag(γ²) W.  Each channel's
    E[f(u)], E[f(u)²] and E[f'(u)] come from Gauss–Hermite quadrature of the graph's own element-wise
    ops (decomposed GELU included); across channels cov(f(u_i), f(u_j)) ≈ E[f'(u_i)] C_ij E[f'(u_j)]
    (Stein's lemma, first order)."""
    if c.unsupported is not None or c.k != 1:
        return None
    src = _ln_linear_source(view, c.x)
    if src is None:
        return None
    q, w, b, u = src
    norm = view.nodes[q]
    gamma = view.constant_value(norm.input[1])
    beta = view.constant_value(norm.input[2]) if len(norm.input) > 2 and norm.input[2] else np.zeros(w.shape[0])
    if gamma is None or beta is None or w.shape[1] != c.n_in:
        return None
    g2 = np.broadcast_to(np.asarray(gamma, np.float64).ravel() ** 2, (w.shape[0],))
    mu = w.T @ np.broadcast_to(np.asarray(beta, np.float64).ravel(), (w.shape[0],)) + b
    cov = (w.T * g2) @ w
    sd = np.sqrt(np.maximum(np.diag(cov), 1e-30))
    y = _pointwise(view, c.x, u, mu[:, None] + sd[:, None] * _HERMITE_T[None, :])
    if y is None or np.ndim(y) != 2 or not np.all(np.isfinite(y)):
        return None
    mean = y @ _HERMITE_W
    second = (y * y) @ _HERMITE_W
    slope = (y * _HERMITE_T[None, :]) @ _HERMITE_W / sd  # E[f'(u)] = E[(u - μ) f(u)] / σ²
    h = np.outer(mean, mean) + (slope[:, None] * cov * slope[None, :])
    np.fill_diagonal(h, second)
    st = empty_stats(c, max_block, "ln-prior")
    for bi, (c0, c1) in enumerate(st.blocks):
        blk = h[c0:c1, c0:c1]
        if st.bias:
            m = mean[c0:c1]
            blk = np.block([[blk, m[:, None]], [m[None, :], np.ones((1, 1))]])
        st.h[bi] = blk
    return st
