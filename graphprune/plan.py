"""A pruning plan: which channels of which tensor axes survive.

Built from groups and kept units, it is plain data: it can be written as JSON (``--plan``) and
re-applied to the same model (``apply-plan``), or used to slice a PyTorch ``state_dict`` whose names
match the exported initializers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graphprune.analysis import Analysis
from graphprune.errors import GraphpruneError, UsageError
from graphprune.rules import Space

PLAN_VERSION = 1


@dataclass
class PruningPlan:
    keep: dict[Space, np.ndarray]
    sizes: dict[Space, int]
    model_sha256: str | None = None
    groups: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def from_units(analysis: Analysis, kept_units: Mapping[int, np.ndarray]) -> PruningPlan:
        """Channels to keep per space, from kept units per group (groups not listed stay whole)."""
        removed: dict[Space, set[int]] = {}
        sizes: dict[Space, int] = {}
        records = []
        by_id = {g.id: g for g in analysis.groups}
        for gid, kept in kept_units.items():
            g = by_id[gid]
            kept = np.asarray(kept, dtype=np.int64)
            if len(kept) == g.n_units:
                continue
            if len(kept) == 0:
                raise GraphpruneError(f"group {gid} would lose all its channels")
            drop = np.setdiff1d(np.arange(g.n_units), kept)
            for s in g.spaces:
                removed.setdefault(s, set()).update(g.removed_indices(s, drop).tolist())
                sizes[s] = g.sizes[s]
            records.append({"id": gid, "units": g.n_units, "kept_units": kept.tolist(),
                            "nodes": list(g.nodes)})
        keep = {}
        for s, rem in removed.items():
            kept_idx = np.setdiff1d(np.arange(sizes[s]), np.fromiter(rem, dtype=np.int64))
            if len(kept_idx) == 0:
                raise GraphpruneError(f"pruning would leave 0 channels in {s}")
            keep[s] = kept_idx
        return PruningPlan(keep=keep, sizes=sizes, groups=records)

    def weight_axes(self, is_constant: Any) -> dict[str, dict[int, np.ndarray]]:
        out: dict[str, dict[int, np.ndarray]] = {}
        for s, k in self.keep.items():
            if not s.virtual and is_constant(s.tensor):
                out.setdefault(s.tensor, {})[s.axis] = k
        return out

    # JSON ---------------------------------------------------------------------------------------
    def to_json(self, is_constant: Any) -> dict[str, Any]:
        tensors: dict[str, dict[str, Any]] = {}
        for s, k in sorted(self.keep.items()):
            if s.virtual:
                continue
            entry = tensors.setdefault(s.tensor, {"kind": "weight" if is_constant(s.tensor) else "activation",
                                                  "axes": {}})
            entry["axes"][str(s.axis)] = {"size": self.sizes[s], "keep": k.tolist()}
        return {
            "graphprune_plan": PLAN_VERSION,
            "model_sha256": self.model_sha256,
            "tensors": tensors,
            "groups": self.groups,
            **self.meta,
        }

    def save(self, path: str | os.PathLike[str], is_constant: Any) -> None:
        from graphprune.fileio import write_text_atomic

        write_text_atomic(Path(path), json.dumps(self.to_json(is_constant), indent=1))

    @staticmethod
    def load(path: str | os.PathLike[str]) -> PruningPlan:
        p = Path(path)
        try:
            doc = json.loads(p.read_text())
        except FileNotFoundError as e:
            raise UsageError(f"plan file {p} does not exist") from e
        except (OSError, ValueError) as e:
            raise UsageError(f"plan file {p} is not valid JSON ({e})") from e
        if not isinstance(doc, dict) or doc.get("graphprune_plan") != PLAN_VERSION:
            raise UsageError(f"{p} is not a graphprune plan (version {PLAN_VERSION})")
        keep, sizes = {}, {}
        try:
            for tensor, entry in doc["tensors"].items():
                for axis, ax in entry["axes"].items():
                    s = Space(tensor, int(axis))
                    keep[s] = np.asarray(ax["keep"], dtype=np.int64).reshape(-1)
                    sizes[s] = int(ax["size"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UsageError(f"plan file {p} is malformed ({e})") from e
        for s, k in keep.items():
            if len(k) == 0 or np.any(np.diff(k) <= 0) or k[0] < 0 or k[-1] >= sizes[s]:
                raise UsageError(
                    f"plan file {p}: kept indices of '{s.tensor}' axis {s.axis} must be strictly increasing, "
                    f"non-empty and within [0, {sizes[s]})"
                )
        meta = {k: v for k, v in doc.items() if k not in ("graphprune_plan", "model_sha256", "tensors", "groups")}
        return PruningPlan(keep, sizes, doc.get("model_sha256"), doc.get("groups", []), meta)


def slice_state_dict(state_dict: Mapping[str, Any], plan: PruningPlan | str | os.PathLike[str]) -> dict[str, Any]:
    """Slice a PyTorch ``state_dict`` with a plan whose weight names match the exported initializers.

    Tensors the plan does not name are returned unchanged; BatchNorm running stats are sliced too when
    their names match.  Works on torch tensors or numpy arrays.
    """
    if not isinstance(plan, PruningPlan):
        plan = PruningPlan.load(plan)
    axes_by_name: dict[str, dict[int, np.ndarray]] = {}
    for s, k in plan.keep.items():
        axes_by_name.setdefault(s.tensor, {})[s.axis] = k
    out: dict[str, Any] = {}
    for name, value in state_dict.items():
        axes = axes_by_name.get(name)
        if not axes:
            out[name] = value
            continue
        for axis, kept in sorted(axes.items()):
            if hasattr(value, "index_select"):
                import torch

                value = value.index_select(axis, torch.as_tensor(kept, dtype=torch.long))
            else:
                value = np.take(value, kept, axis=axis)
        out[name] = value.contiguous() if hasattr(value, "contiguous") else value
    return out
