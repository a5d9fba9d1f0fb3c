"""``graphprune sweep``, ``graphprune calibrate-latency``, ``graphprune shrink-latency``.

Thin wrappers over :mod:`graphprune.sweep` and :mod:`graphprune.latency_target`.  They take the same
target options as ``build``/``profile`` (``--target``, ORT/TensorRT settings, ssh options), with
``--device`` repeatable: several devices form a farm that measures in parallel, one model at a time
per device.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from graphprune.commands.targets import _console, options_from, target_options
from graphprune.errors import UsageError


class RoundTo(click.ParamType):
    """``--round-to N`` (an integer >= 1) or ``--round-to auto`` (step edges from the latency table)."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if isinstance(value, int) or value == "auto":
            return value
        try:
            n = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither an integer nor 'auto'", param, ctx)
        if n < 1:
            self.fail(f"{n} must be at least 1", param, ctx)
        return n


ROUND_TO = RoundTo()


def farm_target_options(fn: Callable[..., Any] | None = None, *, target_required: bool = True) -> Any:
    """``target_options`` with ``--device`` repeatable (a farm) and, for shrink, ``--target`` optional."""

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        f = target_options(f)
        params: list[click.Parameter] = f.__click_params__  # type: ignore[attr-defined]
        for i, p in enumerate(params):
            if p.name == "device":
                params[i] = click.Option(["--device"], multiple=True, metavar="ssh://user@host[:port]|local",
                                         help="Measure on this device; repeat for a farm (one model at a time "
                                              "per device, devices in parallel).  Default: this machine.")
            elif p.name == "target_name" and not target_required:
                p.required = False
        return f

    return deco(fn) if fn is not None else deco


def table_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Latency-table options: grid size, timing per point, cache folder."""
    opts = [
        click.option("--points", type=click.IntRange(1, 64), default=6, show_default=True,
                     help="Anchors per channel axis in the latency table (each adds ~4 measurements)."),
        click.option("--table-duration", type=click.FloatRange(0), default=0.05, show_default=True,
                     help="Minimum seconds per table point (all points of a layer are timed interleaved)."),
        click.option("--table-iterations", type=click.IntRange(1), default=10, show_default=True),
        click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Latency table folder [default: ~/.cache/graphprune/latency]."),
    ]
    return functools.reduce(lambda f, o: o(f), reversed(opts), fn)


def farm_from(kw: dict[str, Any]) -> tuple[Any, Any, list[Any]]:
    """(Target, TargetOptions without executor, devices) from parsed options; consumes what it reads."""
    from graphprune.farm import parse_devices
    from graphprune.targets import SshExecutor, SshOptions

    urls = kw.pop("device") or ()
    ssh = SshOptions(known_hosts=kw["known_hosts"], identity=kw["identity"],
                     accept_new_host_key=kw["insecure_accept_new_host_key"], connect_timeout=kw["connect_timeout"],
                     remote_python=kw["remote_python"], remote_cache=kw["remote_cache"])
    devices = parse_devices(urls, lambda url: SshExecutor(url, ssh))
    target, options = options_from({**kw, "device": None})
    for key in list(kw):
        if key in _TARGET_KEYS:
            kw.pop(key)
    return target, options, devices


_TARGET_KEYS = {"target_name", "known_hosts", "identity", "insecure_accept_new_host_key", "connect_timeout",
                "remote_python", "remote_cache", "shapes", "min_shapes", "max_shapes", "threads",
                "inter_op_threads", "graph_opt_level", "spinning", "xnnpack", "precision", "workspace", "dla_core",
                "gpu_fallback", "timing_cache", "compute_capability", "strongly_typed"}


class RichSteps:
    """A rich progress bar across every step (hidden when stderr is not a terminal)."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.task = progress.add_task("starting", total=0)

    def add(self, total: int) -> None:
        t = self.progress.tasks[0].total or 0
        self.progress.update(self.task, total=t + total)

    def advance(self, n: int, label: str) -> None:
        self.progress.update(self.task, advance=n, description=label)


@contextlib.contextmanager
def progress_bar() -> Iterator[RichSteps]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description:<40.40}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as progress:
        yield RichSteps(progress)


def _timing(warmup: float, iterations: int, duration: float) -> Any:
    from graphprune.targets import ProfileOptions

    return ProfileOptions(warmup_s=warmup, iterations=iterations, duration_s=duration)


def _f(x: Any, spec: str = ".3f") -> str:
    return "-" if x is None or x == "" else format(x, spec)


def print_sweep(result: Any) -> None:
    from rich.table import Table

    show_pred = any(r.get("predicted_ms") is not None for r in result.rows)
    show_acc = result.quality == "accuracy"
    table = Table(title=f"sweep ({result.out_dir})")
    cols = ["point", "ratio", "device", "MACs (M)", "MACs %", "params %", "latency ms", "p90 ms", "speed-up"]
    cols += ["min ms", "predicted ms (min)"] if show_pred else []
    cols += ["accuracy"] if show_acc else []
    for c in [*cols, "Pareto"]:
        table.add_column(c, justify="left" if c in ("point", "device") else "right")
    for r in result.rows:
        cells = [r["point"], f"{r['ratio']:g}", str(r["device"]), _f(r["macs"] / 1e6 if r["macs"] else None),
                 _f(100 * r["macs_frac"] if r["macs_frac"] else None, ".1f"),
                 _f(100 * r["params_frac"] if r["params_frac"] else None, ".1f"), _f(r["latency_ms"]), _f(r["p90_ms"]),
                 "1.00x" if r["point"] == "dense" else (_f(r["speedup"], ".2f") + "x" if r["speedup"] else "-")]
        cells += [_f(r.get("min_ms")), _f(r.get("predicted_ms"))] if show_pred else []
        cells += [_f(r.get("accuracy"), ".4f")] if show_acc else []
        table.add_row(*cells, "*" if r["pareto"] else "")
    _console().print(table)
    files = ", ".join(p.name for p in (result.json_path, result.csv_path, result.png_path) if p is not None)
    click.echo(f"wrote {files} in {result.out_dir}; Pareto front by latency and {result.quality}"
               + (f"; {result.skipped} points were already done" if result.skipped else ""))
    for w in result.warnings:
        click.echo(f"Note: {w}", err=True)


def print_calibration(cal: Any, show_layers: int) -> None:
    from rich.table import Table

    rows_by_sig: dict[str, Any] = {}
    for lay in cal.layers:
        rows_by_sig.setdefault(lay.sig.id, [lay.sig, 0])[1] += 1
    table = Table(title=f"latency table {cal.table.path} (devices: {', '.join(cal.devices)})")
    for c in ("layer shape", "nodes", "axis", "channels: ms (relative to dense)"):
        table.add_column(c)
    for sig, n in list(rows_by_sig.values())[:show_layers]:
        rows = cal.table.rows(sig)
        dense = rows.get((sig.cin, sig.cout))
        axes = [("in" if not sig.multiplier else "channels", {ci: t for (ci, co), t in rows.items()
                                                              if co == (ci * sig.multiplier or sig.cout)})]
        if not sig.multiplier:
            axes.append(("out", {co: t for (ci, co), t in rows.items() if ci == sig.cin}))
        first = True
        for axis, pts in axes:
            if len(pts) < 2 and not (first and axis == axes[-1][0]):
                continue
            text = "  ".join(f"{c}:{t:.3f}" + (f" ({t / dense:.2f})" if dense else "") for c, t in sorted(pts.items()))
            table.add_row(sig.describe() if first else "", str(n) if first else "", axis, text)
            first = False
    _console().print(table)
    click.echo(f"dense model {cal.dense_ms:.3f} ms; measured {cal.measured} points now, {cal.cached} from the cache "
               f"({cal.seconds:.1f} s)")
    if cal.probe:
        p = cal.probe
        click.echo(f"in-graph probe (one unit less in every other group): {p['probe_ms']:.3f} ms beside dense "
                   f"{p['dense_ms']:.3f} ms ({100 * (p['probe_ms'] / p['dense_ms'] - 1):+.1f}%)")
    for w in cal.warnings[:3]:
        click.echo(f"Note: {w}", err=True)


def run_shrink_latency(model: str, target_latency: str | None, output: str | None, kw: dict[str, Any], *,
                       ratio: float = 0.0, criterion: str = "l2", global_ranking: bool = True,
                       round_to: int | str = "auto",
                       max_ratio: float = 0.9, ignore: tuple[str, ...] = (), allow_lossy: bool = False,
                       verify: bool = True, measure: bool = True, seed: int = 0, as_json: bool = False,
                       report_path: str | None = None) -> Any:
    """What ``shrink --target-latency TIME`` (or ``shrink --ratio R --round-to auto``, with
    ``target_latency=None``) runs: table-driven pruning, then predicted vs measured.  ``kw`` holds the
    options of :func:`table_options` and :func:`farm_target_options`."""
    from graphprune.latency_target import parse_latency, shrink_to_latency
    from graphprune.targets import ProfileOptions
    from graphprune.targets.report import write_json

    target_ms = None if target_latency is None else parse_latency(target_latency)
    if kw.get("target_name") is None:
        what = "--target-latency" if target_latency is not None else "--round-to auto"
        raise UsageError(f"{what} needs --target (where the latency table is measured), e.g. -t ort-cpu")
    points, cache_dir = kw.pop("points"), kw.pop("cache_dir")
    table_timing = ProfileOptions(warmup_s=0.1, iterations=kw.pop("table_iterations"),
                                  duration_s=kw.pop("table_duration"))
    target, options, devices = farm_from(kw)
    with progress_bar() as steps:
        result = shrink_to_latency(model, target_ms, ratio=ratio, target=target, options=options, devices=devices,
                                   cache_dir=cache_dir, points=points, timing=table_timing, criterion=criterion,
                                   global_ranking=global_ranking, round_to=round_to, max_ratio=max_ratio,
                                   ignore=ignore, allow_lossy=allow_lossy, verify=verify, output=output,
                                   measure=measure, seed=seed, steps=steps)
    report = result.report()
    if report_path:
        write_json(Path(report_path), report)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        click.echo(f"{model} -> {result.pruned.output}")
        click.echo(result.summary())
        for w in result.pruned.warnings[:5]:
            click.echo(f"warning: {w}", err=True)
    return result


def register(cli: click.Group) -> None:
    @cli.command("sweep")
    @click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--ratios", required=True, help="START:STOP:STEP (stop included) or a list: 0.25,0.5.")
    @click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Folder for the pruned models, sweep.json/.csv/.png [default: ./<model>-sweep].")
    @click.option("--method", type=click.Choice(["magnitude", "obspa"]), default="magnitude", show_default=True)
    @click.option("--criterion", default="l2", show_default=True, help="Importance criterion (magnitude).")
    @click.option("--round-to", type=ROUND_TO, default=1, show_default=True,
                  help="Keep channel counts multiples of N, or 'auto': the step edges of the latency table.")
    @click.option("--global", "global_ranking", is_flag=True, help="Rank normalised scores across groups.")
    @click.option("--sensitivity", is_flag=True, help="Allocate by measured output damage (see shrink --help).")
    @click.option("--eval", "eval_spec", default=None, metavar="MODULE:FUNCTION",
                  help="Accuracy callback: function(model_path) -> float (higher is better); a .py path works.")
    @click.option("--warmup", type=click.FloatRange(0), default=0.2, show_default=True)
    @click.option("--iterations", type=click.IntRange(1), default=10, show_default=True)
    @click.option("--duration", type=click.FloatRange(0), default=0.5, show_default=True,
                  help="Minimum seconds per model per measurement.")
    @click.option("--interleave/--no-interleave", default=True, show_default=True,
                  help="Time each point interleaved with the dense model (speed-up from one run).")
    @click.option("--fresh", is_flag=True, help="Start over instead of resuming the sweep in the output folder.")
    @click.option("--no-plot", is_flag=True, help="Do not draw sweep.png.")
    @table_options
    @farm_target_options
    def sweep_cmd(model: Path, ratios: str, out_dir: Path | None, method: str, criterion: str, round_to: int | str,
                  global_ranking: bool, sensitivity: bool, eval_spec: str | None, warmup: float, iterations: int, duration: float,
                  interleave: bool, fresh: bool, no_plot: bool, points: int, table_duration: float,
                  table_iterations: int, cache_dir: Path | None, **kw: Any) -> None:
        """Prune MODEL at each ratio, time every point on a target (or a device farm), optionally evaluate,
        and write a table, CSV, JSON and PNG with the Pareto front.  Re-running resumes."""
        from graphprune.sweep import load_evaluate, parse_ratios, sweep

        values = parse_ratios(ratios)
        evaluate = load_evaluate(eval_spec) if eval_spec else None
        target, options, devices = farm_from(kw)
        with progress_bar() as steps:
            result = sweep(model, values, out_dir=out_dir or Path(f"{model.stem}-sweep"), target=target,
                           options=options, devices=devices, method=method, criterion=criterion, round_to=round_to,
                           global_ranking=global_ranking, sensitivity=sensitivity, evaluate=evaluate, eval_name=eval_spec,
                           timing=_timing(warmup, iterations, duration), interleave=interleave, resume=not fresh,
                           cache_dir=cache_dir, points=points, plot=not no_plot, steps=steps,
                           table_timing=_timing(0.1, table_iterations, table_duration))
        print_sweep(result)

    @cli.command("calibrate-latency")
    @click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Also write the table here.")
    @click.option("--show", type=click.IntRange(0), default=20, show_default=True, help="Layer shapes to print.")
    @table_options
    @farm_target_options
    def calibrate_cmd(model: Path, json_out: Path | None, show: int, points: int, table_duration: float,
                      table_iterations: int, cache_dir: Path | None, **kw: Any) -> None:
        """Measure the channel staircase of every Conv/Gemm/MatMul shape in MODEL on a target, and the
        dense model; cached per target, device class and library versions (only missing points run)."""
        from graphprune.calibrate import calibrate

        target, options, devices = farm_from(kw)
        if not model.is_file():
            raise UsageError(f"{model}: no such file")
        with progress_bar() as steps:
            cals = calibrate(model, target=target, options=options, devices=devices, cache_dir=cache_dir,
                             points=points, timing=_timing(0.1, table_iterations, table_duration), steps=steps)
        for cal in cals:
            print_calibration(cal, show)
            if json_out is not None:
                cal.table.save(json_out if len(cals) == 1 else json_out.with_name(f"{cal.table.name}.json"))

    @cli.command("shrink-latency")
    @click.argument("model", type=str)
    @click.option("--target-latency", required=True, metavar="TIME", help="e.g. 5ms, 800us, 0.005s.")
    @click.option("-o", "--output", default=None, help="Output path (default: <stem>.pruned.onnx).")
    @click.option("--criterion", default="l2", show_default=True)
    @click.option("--local", "local_ranking", is_flag=True, help="Same ratio in every group instead of global ranking.")
    @click.option("--round-to", type=ROUND_TO, default="auto", show_default=True)
    @click.option("--max-ratio", type=float, default=0.9, show_default=True)
    @click.option("--ignore", multiple=True, help="Node/tensor pattern whose groups stay whole; repeatable.")
    @click.option("--allow-lossy", is_flag=True)
    @click.option("--no-verify", is_flag=True)
    @click.option("--no-measure", is_flag=True, help="Predict only; do not time the result.")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--report", "report_path", default=None, help="Write the report (JSON) here.")
    @click.option("--json", "as_json", is_flag=True)
    @table_options
    @farm_target_options
    def shrink_latency_cmd(model: str, target_latency: str, output: str | None, criterion: str, local_ranking: bool,
                           round_to: int | str, max_ratio: float, ignore: tuple[str, ...], allow_lossy: bool,
                           no_verify: bool, no_measure: bool, seed: int, report_path: str | None, as_json: bool,
                           **kw: Any) -> None:
        """Prune MODEL (globally) until the measured per-layer table predicts TIME on the target, then
        time dense and pruned side by side and report predicted vs measured."""
        run_shrink_latency(model, target_latency, output, kw, criterion=criterion,
                           global_ranking=not local_ranking, round_to=round_to, max_ratio=max_ratio, ignore=ignore,
                           allow_lossy=allow_lossy, verify=not no_verify, measure=not no_measure, seed=seed,
                           as_json=as_json, report_path=report_path)
