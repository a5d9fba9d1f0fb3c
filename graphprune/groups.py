"""Coupled channel groups: immutable results of the analysis.

A group has ``n_units`` prunable units.  For each member space, ``indices[space][u]`` lists the
channels of that space that unit ``u`` owns (one channel for identity couplings, a block of H*W
features after a Flatten, one channel per conv-group for grouped convs...).  Removing unit ``u``
removes exactly those channels from every member.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

import numpy as np

from graphprune.cost import Cost
from graphprune.graph import GraphView
from graphprune.rules import Param, Space


@dataclass(frozen=True)
class Group:
    id: int
    spaces: tuple[Space, ...]
    indices: Mapping[Space, np.ndarray]
    sizes: Mapping[Space, int]
    params: tuple[Param, ...]
    frozen_reasons: tuple[str, ...]
    lossy_reasons: tuple[str, ...]
    nodes: tuple[str, ...]
    macs: int
    kind: str = "channels"  # "channels", or "heads" / "head-dim" for attention groups

    # construction ------------------------------------------------------------------------------
    @staticmethod
    def build(
        gid: int,
        spaces: list[Space],
        indices: dict[Space, np.ndarray],
        sizes: Mapping[Space, int | None],
        frozen: Mapping[Space, list[str]],
        lossy: Mapping[Space, list[str]],
        params: Mapping[Space, list[Param]],
        view: GraphView,
        cost: Cost,
        kind: str = "channels",
    ) -> Group:
        # (two axes of one tensor in a group is fine: a square weight inside a residual block loses
        # row c and column c together)
        reasons = sorted({r for s in spaces for r in frozen.get(s, [])})
        ps = tuple(p for s in spaces for p in params.get(s, []))
        node_ids = sorted({p.node for p in ps})
        for arr in indices.values():
            arr.setflags(write=False)
        return Group(
            id=gid,
            spaces=tuple(spaces),
            indices=MappingProxyType(dict(indices)),
            sizes=MappingProxyType({s: int(sizes[s]) for s in spaces}),  # type: ignore[arg-type]
            params=ps,
            frozen_reasons=tuple(reasons),
            lossy_reasons=tuple(sorted({r for s in spaces for r in lossy.get(s, [])})),
            nodes=tuple(view.node_names[i] for i in node_ids),
            macs=sum(cost.node_macs.get(i, 0) for i in node_ids),
            kind=kind,
        )

    @staticmethod
    def frozen_region(
        gid: int,
        spaces: list[Space],
        reasons: list[str],
        params: Mapping[Space, list[Param]],
        view: GraphView,
        cost: Cost,
    ) -> Group:
        ps = tuple(p for s in spaces for p in params.get(s, []))
        node_ids = sorted({p.node for p in ps})
        return Group(
            id=gid,
            spaces=tuple(spaces),
            indices=MappingProxyType({}),
            sizes=MappingProxyType({}),
            params=ps,
            frozen_reasons=tuple(reasons) or ("channel counts unknown",),
            lossy_reasons=(),
            nodes=tuple(view.node_names[i] for i in node_ids),
            macs=sum(cost.node_macs.get(i, 0) for i in node_ids),
        )

    def renumbered(self, gid: int) -> Group:
        return replace(self, id=gid)

    # queries -----------------------------------------------------------------------------------
    @property
    def n_units(self) -> int:
        if not self.indices:
            return 0
        return int(next(iter(self.indices.values())).shape[0])

    @property
    def frozen(self) -> bool:
        return bool(self.frozen_reasons)

    @property
    def lossy(self) -> bool:
        return bool(self.lossy_reasons)

    @property
    def prunable(self) -> bool:
        """Can lose units exactly: not frozen, not lossy, more than one unit."""
        return not self.frozen and not self.lossy and self.n_units > 1

    @property
    def status(self) -> str:
        if self.frozen:
            return "frozen"
        if self.n_units <= 1:
            return "single"
        return "lossy" if self.lossy else "prunable"

    def channels_per_unit(self, space: Space) -> int:
        return int(self.indices[space].shape[1])

    def kept_indices(self, space: Space, kept_units: np.ndarray) -> np.ndarray:
        """Sorted channel indices of ``space`` that survive when only ``kept_units`` remain."""
        return np.sort(self.indices[space][np.asarray(kept_units, dtype=np.int64)].ravel())

    def removed_indices(self, space: Space, removed_units: np.ndarray) -> np.ndarray:
        return np.sort(self.indices[space][np.asarray(removed_units, dtype=np.int64)].ravel())

    def param_spaces(self, role: str | None = None) -> list[Param]:
        return [p for p in self.params if role is None or p.role == role]

    def describe(self) -> str:
        return f"group {self.id}: {self.n_units} units over {len(self.spaces)} spaces ({self.status})"
