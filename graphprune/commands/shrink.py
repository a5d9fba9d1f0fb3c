"""``graphprune shrink`` and ``graphprune apply-plan``."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from graphprune.commands.sweep import ROUND_TO, farm_target_options, run_shrink_latency, table_options
from graphprune.errors import UsageError
from graphprune.fileio import write_text_atomic
from graphprune.importance import NORMALIZERS, REDUCTIONS, criteria
from graphprune.obspa import DEFAULT_STATS, STATS_MODES
from graphprune.pruner import apply_plan, default_output, shrink
from graphprune.report import console, phase_status


def _ratio_for(values: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    out = []
    for v in values:
        pattern, sep, r = v.rpartition("=")
        try:
            ratio = float(r)
        except ValueError:
            ratio = math.nan
        if not sep or not pattern or math.isnan(ratio):
            raise UsageError(f"--ratio-for expects PATTERN=R (e.g. 'layer4*=0.7'), got '{v}'")
        out.append((pattern, ratio))
    return tuple(out)


@click.command("shrink")
@click.argument("model", type=str)
@click.option("-o", "--output", type=str, default=None, help="Output path (default: <stem>.pruned.onnx beside MODEL).")
@click.option("--ratio", type=float, default=None, help="Fraction of each prunable group's channels to remove, in [0, 1).")
@click.option("--criterion", type=click.Choice(criteria()), default="l2", show_default=True)
@click.option("--reduction", type=click.Choice(list(REDUCTIONS)), default="mean", show_default=True,
              help="How member scores combine into a group score.")
@click.option("--normalizer", type=click.Choice(list(NORMALIZERS)), default="mean", show_default=True)
@click.option("--global", "global_ranking", is_flag=True, help="Rank normalised scores across groups.")
@click.option("--sensitivity", is_flag=True,
              help="Measure each group's damage to the model's outputs (on the data-free prior or --calib) and "
                   "spend the budget where it is least; ranks globally (--heads holds in total, across layers).")
@click.option("--max-ratio", type=float, default=0.9, show_default=True, help="Cap on the fraction removed from any group.")
@click.option("--target-macs", type=float, default=None, help="Prune until MACs reach this fraction of dense.")
@click.option("--target-params", type=float, default=None, help="Prune until params reach this fraction of dense.")
@click.option("--round-to", type=ROUND_TO, default=1, show_default=True,
              help="Keep channel counts multiples of N, or 'auto': the step edges of --target's latency table.")
@click.option("--target-latency", default=None, metavar="TIME",
              help="Prune (globally) until --target's latency table predicts TIME (5ms, 800us), then measure.")
@click.option("--ignore", multiple=True, help="Node/tensor name pattern (fnmatch) whose groups stay whole; repeatable.")
@click.option("--ratio-for", "ratio_for", multiple=True, help="PATTERN=R: a different ratio for matching groups.")
@click.option("--allow-lossy", is_flag=True, help="Also prune groups with lossy couplings (e.g. LayerNorm axes).")
@click.option("--heads", type=float, default=None, help="Fraction of attention heads to remove (whole heads; "
              "K/V heads of grouped-query attention go with their query heads).")
@click.option("--head-dim", "head_dim", type=float, default=None,
              help="Fraction of every head's dimensions to remove (the same dims in every head).")
@click.option("--split", type=click.Choice(["heads", "head-dim"]), default="heads", show_default=True,
              help="How reshapes into heads are read when --heads/--head-dim are not given.")
@click.option("--no-verify", is_flag=True, help="Skip the equivalence proof against the masked reference.")
@click.option("--inputs", type=str, default=None, help=".npz with model inputs for the proof (default: random).")
@click.option("--calib", type=str, default=None,
              help=".npz calibration inputs for --criterion activation or --method obspa (--stats calib).")
@click.option("--method", type=click.Choice(["magnitude", "obspa"]), default="magnitude", show_default=True,
              help="magnitude: score with --criterion and slice; obspa: OBS saliency and consumer weight "
                   "update, no fine-tuning, no data needed.")
@click.option("--stats", type=click.Choice(list(STATS_MODES)), default=None,
              help=f"Where OBSPA's statistics come from [default: {DEFAULT_STATS}, or calib with --calib].")
@click.option("--samples", type=int, default=None, help="Inputs OBSPA draws for its statistics (default: by model size).")
@click.option("--propagate/--no-propagate", default=None,
              help="OBSPA: refit consumers in graph order on the pruned model's inputs [default: when affordable].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--plan", "plan_path", type=str, default=None, help="Write the pruning plan (JSON) here.")
@click.option("--report", "report_path", type=str, default=None, help="Write the report (JSON) here.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of the summary.")
@table_options
@farm_target_options(target_required=False)
def shrink_cmd(model: str, output: str | None, ratio: float | None, criterion: str, reduction: str,
               normalizer: str, global_ranking: bool, max_ratio: float, target_macs: float | None,
               target_params: float | None, round_to: int | str, ignore: tuple[str, ...], ratio_for: tuple[str, ...],
               allow_lossy: bool, heads: float | None, head_dim: float | None, split: str, no_verify: bool, inputs: str | None, calib: str | None, seed: int,
               plan_path: str | None, report_path: str | None, as_json: bool, method: str = "magnitude",
               stats: str | None = None, samples: int | None = None, propagate: bool | None = None,
               sensitivity: bool = False, target_latency: str | None = None, **target_kw: Any) -> None:
    """Remove channels from MODEL and prove the result equals the masked original."""
    if target_latency is not None or round_to == "auto":
        if target_latency is not None and (ratio is not None or target_macs or target_params):
            raise UsageError("give --target-latency or --ratio/--target-macs/--target-params, not both")
        if method != "magnitude" or heads is not None or head_dim is not None or sensitivity:
            raise UsageError("--target-latency and --round-to auto work with --method magnitude on channels "
                             "(without --sensitivity)")
        run_shrink_latency(model, target_latency, output, target_kw, ratio=ratio or 0.0, criterion=criterion,
                           global_ranking=global_ranking or target_latency is not None, round_to=round_to,
                           max_ratio=max_ratio, ignore=ignore, allow_lossy=allow_lossy, verify=not no_verify,
                           seed=seed, as_json=as_json, report_path=report_path)
        return
    if ratio is None and target_macs is None and target_params is None and heads is None and head_dim is None:
        raise UsageError("give --ratio R, --heads R, --head-dim R, --target-macs F or --target-params F")
    out = Path(output) if output is not None else default_output(Path(model))
    _distinct_paths({"MODEL": model, "-o": str(out), "--plan": plan_path, "--report": report_path})
    if report_path:
        _precheck(report_path)
    if plan_path:
        _precheck(plan_path)
    # all or nothing: if the plan or the report cannot be written, the model written before them goes too
    fresh = [p for p in (out, out.with_name(out.name + ".data"), plan_path and Path(plan_path),
                         report_path and Path(report_path)) if p and not p.exists()]
    with _remove_on_error(fresh), phase_status("shrink") as progress:
        result = shrink(
            model, ratio=ratio or 0.0, criterion=criterion, reduction=reduction, normalizer=normalizer,
            global_ranking=global_ranking, max_ratio=max_ratio, target_macs=target_macs,
            target_params=target_params, round_to=int(round_to), ignore=ignore, ratio_for=_ratio_for(ratio_for),
            allow_lossy=allow_lossy, heads=heads, head_dim=head_dim, split=split, verify=not no_verify,
            inputs=inputs, calib=calib, seed=seed, output=output, plan_path=plan_path,
            method=method, stats=stats, samples=samples, propagate=propagate, sensitivity=sensitivity,
            progress=progress,
        )
        report = result.report()
        report["model"] = model
        if report_path:
            write_text_atomic(Path(report_path), json.dumps(report, indent=2))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    con = console()
    con.print(f"[bold]{model}[/] -> [bold]{result.output}[/]")
    con.print(result.summary(), highlight=False)
    for w in result.warnings:
        con.print(f"[yellow]warning:[/] {w}", highlight=False)


@contextlib.contextmanager
def _remove_on_error(paths: list[Path]) -> Iterator[None]:
    """Delete ``paths`` (files this command creates) if the command fails: no partial results."""
    try:
        yield
    except BaseException:
        for p in paths:
            with contextlib.suppress(OSError):
                p.unlink()
        raise


def _distinct_paths(paths: dict[str, str | None]) -> None:
    """Refuse one file in two roles (e.g. ``--plan`` over the input model): a later write would clobber it."""
    seen: dict[Path, str] = {}
    for role, p in paths.items():
        if p is None:
            continue
        key = Path(p).resolve()
        if key in seen:
            other = {"MODEL": "the input file", "PLAN": "the plan file"}.get(seen[key], f"the {seen[key]} path")
            raise UsageError(f"{role} path {p} is {other}; choose another path")
        seen[key] = role


def _precheck(path: str) -> None:
    from graphprune.fileio import check_output_dir

    check_output_dir(Path(path))


@click.command("apply-plan")
@click.argument("model", type=str)
@click.argument("plan", type=str)
@click.option("-o", "--output", type=str, default=None, help="Output path (default: <stem>.pruned.onnx).")
@click.option("--no-verify", is_flag=True, help="Skip the equivalence proof.")
@click.option("--force", is_flag=True, help="Apply even if the model's hash differs from the plan's.")
def apply_plan_cmd(model: str, plan: str, output: str | None, no_verify: bool, force: bool) -> None:
    """Re-apply a pruning PLAN (from ``shrink --plan``) to MODEL exactly."""
    _distinct_paths({"MODEL": model, "PLAN": plan,
                     "-o": output if output is not None else str(default_output(Path(model)))})
    result = apply_plan(model, plan, output=output, verify=not no_verify, force=force)
    con = console()
    con.print(f"[bold]{model}[/] -> [bold]{result.output}[/]")
    con.print(result.summary(), highlight=False)


def register(cli: click.Group) -> None:
    cli.add_command(shrink_cmd)
    cli.add_command(apply_plan_cmd)
