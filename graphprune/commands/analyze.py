"""``graphprune analyze``: show coupled channel groups, what is prunable and why not."""

from __future__ import annotations

import json

import click
from rich.table import Table

from graphprune.analysis import analyze
from graphprune.report import analysis_dict, console
from graphprune.rules import AnalysisOptions


def _fmt(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


@click.command("analyze")
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one machine-readable JSON document.")
@click.option("--verbose", is_flag=True, help="List every member space (and channel indices in --json).")
@click.option("--split", type=click.Choice(["heads", "head-dim"]), default="heads", show_default=True,
              help="How a reshape that splits a channel axis (hidden -> heads x head_dim) is read.")
def analyze_cmd(model: str, as_json: bool, verbose: bool, split: str) -> None:
    """Find coupled channel groups in MODEL."""
    a = analyze(model, AnalysisOptions(split_preference=split))  # type: ignore[arg-type]
    doc = analysis_dict(a, verbose)
    doc["model"] = model
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    con = console()
    t = Table(title=f"{model}: {len(a.groups)} groups", show_lines=False)
    for col in ("id", "units", "status", "MACs %", "spaces", "weights of", "why"):
        t.add_column(col, overflow="fold")
    for g in doc["groups"]:
        nodes = g["nodes"]
        names = ", ".join(nodes if verbose else nodes[:3])
        if not verbose and len(nodes) > 3:
            names += f" (+{len(nodes) - 3})"
        if verbose:
            names += "\n" + ", ".join(f"{m['tensor']}[{m['axis']}]" for m in g["members"])
        why = "; ".join(g["frozen_reasons"][:2] + g["lossy_reasons"][:1])
        t.add_row(str(g["id"]), str(g["units"]), g["status"], f"{100 * g['macs_share']:.1f}",
                  str(len(g["members"])), names, why)
    con.print(t)
    c = doc["group_counts"]
    con.print(
        f"params {_fmt(doc['params'])}  MACs {_fmt(doc['macs'])} "
        f"({', '.join(f'{k} {_fmt(v)}' for k, v in sorted(doc['macs_by_op'].items()))})  "
        f"prunable share of MACs {100 * doc['prunable_macs_share']:.1f}%"
    )
    con.print(
        f"groups: {c['prunable']} prunable, {c['lossy']} lossy, {c['frozen']} frozen, {c['single']} single-unit"
        f"  (analysis {doc['seconds'] * 1000:.0f} ms)"
    )
    if doc["unknown_shapes"]:
        shown = ", ".join(doc["unknown_shapes"][:5])
        con.print(f"[yellow]no shape for {len(doc['unknown_shapes'])} tensors[/] (e.g. {shown}): "
                  "shape inference could not resolve them; channels touching them are frozen")
    for w in doc["warnings"]:
        con.print(f"[yellow]warning:[/] {w}")


def register(cli: click.Group) -> None:
    cli.add_command(analyze_cmd)
