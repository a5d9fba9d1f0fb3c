"""Vectorised connected components over integer edge lists (hook-and-compress)."""

from __future__ import annotations

import numpy as np


def components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Label of each of ``n`` elements: the smallest element index in its component."""
    parent = np.arange(n, dtype=np.int64)
    if len(u) == 0:
        return parent
    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    while True:
        pu, pv = parent[u], parent[v]
        lo = np.minimum(pu, pv)
        if np.array_equal(pu, pv):
            break
        np.minimum.at(parent, pu, lo)
        np.minimum.at(parent, pv, lo)
        while True:  # pointer jumping until every element points at a root
            pp = parent[parent]
            if np.array_equal(pp, parent):
                break
            parent = pp
    return parent
