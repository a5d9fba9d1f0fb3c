"""Plain-data summaries of an analysis (for ``--json`` and the terminal tables)."""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console

from graphprune.analysis import Analysis
from graphprune.groups import Group


def group_dict(g: Group, total_macs: int, verbose: bool = False) -> dict[str, Any]:
    members = []
    for s in g.spaces:
        entry: dict[str, Any] = {"tensor": s.tensor, "axis": s.axis}
        if s in g.sizes:
            entry["size"] = g.sizes[s]
            entry["per_unit"] = g.channels_per_unit(s)
        if verbose and s in g.indices:
            entry["indices"] = g.indices[s].tolist()
        members.append(entry)
    return {
        "id": g.id,
        "status": g.status,
        "kind": g.kind,
        "units": g.n_units,
        "nodes": list(g.nodes),
        "members": members,
        "params": [{"tensor": p.space.tensor, "axis": p.space.axis, "role": p.role} for p in g.params],
        "frozen_reasons": list(g.frozen_reasons),
        "lossy_reasons": list(g.lossy_reasons),
        "macs": g.macs,
        "macs_share": (g.macs / total_macs) if total_macs else 0.0,
    }


def analysis_dict(a: Analysis, verbose: bool = False) -> dict[str, Any]:
    total = a.cost.macs
    prunable_nodes = {n for g in a.groups if g.prunable for n in g.nodes}
    name_to_idx = {n: i for i, n in enumerate(a.view.node_names)}
    prunable_macs = sum(a.cost.node_macs.get(name_to_idx[n], 0) for n in prunable_nodes)
    counts = {s: sum(1 for g in a.groups if g.status == s) for s in ("prunable", "lossy", "frozen", "single")}
    return {
        "opset": a.view.opset_for(""),
        "nodes": len(a.view.nodes),
        "params": a.cost.params,
        "macs": total,
        "macs_by_op": a.cost.macs_by_op,
        "prunable_macs_share": prunable_macs / total if total else 0.0,
        "group_counts": counts,
        "groups": [group_dict(g, total, verbose) for g in a.groups],
        "unknown_shapes": a.unknown_shapes,
        "warnings": a.warnings,
        "seconds": round(a.seconds, 4),
    }


def console(stderr: bool = False) -> Console:
    """A rich console that stays wide when output is piped (tables stay readable in logs)."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else max(shutil.get_terminal_size((160, 40)).columns, 160)
    return Console(file=stream, width=width)


@contextlib.contextmanager
def phase_status(what: str) -> Iterator[Callable[[str], None] | None]:
    """A live "shrink: analyze..." line on a terminal; nothing when stderr is piped (logs, tests)."""
    if not sys.stderr.isatty():
        yield None
        return
    con = console(stderr=True)
    with con.status(f"{what}: starting") as status:
        yield lambda phase: status.update(f"{what}: {phase}...")
