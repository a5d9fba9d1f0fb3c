"""``graphprune targets``, ``graphprune build``, ``graphprune profile``: thin wrappers over graphprune.targets."""

from __future__ import annotations

import functools
import json
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from graphprune.errors import UsageError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B)?\s*$", re.IGNORECASE)


def parse_shapes(values: tuple[str, ...], option: str) -> dict[str, list[int]]:
    """``name:1x3x224x224`` (repeatable, or comma-separated); the name may itself contain ':'."""
    out: dict[str, list[int]] = {}
    for value in values:
        for spec in filter(None, (s.strip() for s in value.split(","))):
            name, sep, dims = spec.rpartition(":")
            try:
                if not sep or not name:
                    raise ValueError
                out[name] = [int(d) for d in dims.lower().split("x")]
                if any(d < 0 for d in out[name]):
                    raise ValueError
            except ValueError:
                raise UsageError(f"{option} {spec!r}: expected NAME:DxDx... with non-negative integers, "
                                 "e.g. input:1x3x224x224") from None
    return out


def parse_size(value: str | None) -> int | None:
    """``1G``, ``512M``, ``1GiB``, ``1073741824`` -> bytes."""
    if value is None:
        return None
    m = _SIZE.match(value)
    if not m:
        raise UsageError(f"--workspace {value!r}: expected a size such as 512M or 2G")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))


def target_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by build and profile: target, device, shapes, ORT and TensorRT settings."""
    opts = [
        click.option("-t", "--target", "target_name", required=True, help="Target name (see 'graphprune targets')."),
        click.option("--device", default=None, metavar="ssh://user@host[:port]", help="Run on a device over ssh."),
        click.option("--known-hosts", type=click.Path(dir_okay=False, path_type=Path), help="known_hosts file for --device."),
        click.option("--identity", type=click.Path(dir_okay=False, path_type=Path), help="ssh private key for --device."),
        click.option("--insecure-accept-new-host-key", is_flag=True,
                     help="Trust an unknown device host key on first use (StrictHostKeyChecking=accept-new)."),
        click.option("--connect-timeout", type=click.IntRange(1, 600), default=10, show_default=True),
        click.option("--remote-python", default="python3", show_default=True, help="Python on the device."),
        click.option("--remote-cache", default="~/.cache/graphprune", show_default=True, help="Cache folder on the device."),
        click.option("--shapes", "--opt-shapes", "shapes", multiple=True, metavar="NAME:1x3x224x224",
                     help="Shapes of dynamic inputs (TensorRT: the opt shape)."),
        click.option("--min-shapes", multiple=True, metavar="NAME:DIMS", help="TensorRT profile minimum shapes."),
        click.option("--max-shapes", multiple=True, metavar="NAME:DIMS", help="TensorRT profile maximum shapes."),
        click.option("--threads", type=click.IntRange(0), default=None, help="ORT intra-op threads (XNNPACK: its threads)."),
        click.option("--inter-op-threads", type=click.IntRange(0), default=None, help="ORT inter-op threads."),
        click.option("--graph-opt-level", type=click.Choice(["disable", "basic", "extended", "all"]), default="all",
                     show_default=True),
        click.option("--spinning/--no-spinning", default=None, help="ORT thread-pool spinning (default: ORT's)."),
        click.option("--xnnpack", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True),
        click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "bf16"]), default="fp32", show_default=True),
        click.option("--workspace", default=None, metavar="SIZE", help="TensorRT workspace limit, e.g. 1G."),
        click.option("--dla-core", type=click.IntRange(0), default=None, help="Jetson DLA core (TensorRT)."),
        click.option("--gpu-fallback/--no-gpu-fallback", default=True, show_default=True, help="DLA: fall back to GPU."),
        click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), help="TensorRT timing cache file."),
        click.option("--compute-capability", multiple=True, metavar="SM86",
                     help="TensorRT-RTX ahead-of-time targets (repeat or comma-separate)."),
        click.option("--strongly-typed", is_flag=True, help="TensorRT 10: build a strongly typed network."),
    ]
    return functools.reduce(lambda f, o: o(f), reversed(opts), fn)


def options_from(kw: dict[str, Any]) -> tuple[Any, Any]:
    """(Target, TargetOptions) from the parsed CLI options; consumes the keys it knows."""
    from graphprune.targets import OrtOptions, SshExecutor, SshOptions, TargetOptions, TrtOptions, get_target

    target = get_target(kw.pop("target_name"))
    device = kw.pop("device")
    ssh = SshOptions(known_hosts=kw.pop("known_hosts"), identity=kw.pop("identity"),
                     accept_new_host_key=kw.pop("insecure_accept_new_host_key"),
                     connect_timeout=kw.pop("connect_timeout"), remote_python=kw.pop("remote_python"),
                     remote_cache=kw.pop("remote_cache"))
    ccs = [c.strip() for v in kw.pop("compute_capability") for c in v.split(",") if c.strip()]
    options = TargetOptions(
        shapes=parse_shapes(kw.pop("shapes"), "--shapes"),
        min_shapes=parse_shapes(kw.pop("min_shapes"), "--min-shapes"),
        max_shapes=parse_shapes(kw.pop("max_shapes"), "--max-shapes"),
        ort=OrtOptions(intra_op_threads=kw.pop("threads"), inter_op_threads=kw.pop("inter_op_threads"),
                       graph_opt_level=kw.pop("graph_opt_level"), spinning=kw.pop("spinning"),
                       xnnpack=kw.pop("xnnpack")),
        trt=TrtOptions(precision=kw.pop("precision"), workspace_bytes=parse_size(kw.pop("workspace")),
                       dla_core=kw.pop("dla_core"), gpu_fallback=kw.pop("gpu_fallback"),
                       timing_cache=kw.pop("timing_cache"), compute_capabilities=ccs,
                       strongly_typed=kw.pop("strongly_typed")),
        executor=SshExecutor(device, ssh) if device else None,
    )
    return target, options


def _human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _ms(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x:.3f}"


def _console() -> Any:
    from rich.console import Console

    console = Console(soft_wrap=True)
    if not console.is_terminal:  # pipes, CI logs, CliRunner: wide enough for the tables
        console = Console(soft_wrap=True, width=160)
    return console


def render_report(report: Any, top: int) -> None:
    from rich.table import Table

    console = _console()
    table = Table(title=f"{report.target} on {report.location} (ms)")
    for col in ("model", "median", "mean", "p90", "p95", "p99", "min", "std", "cv", "inf/s", "init", "first",
                "peak RSS +"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in report.runs:
        lat = r.latency
        table.add_row(r.name, _ms(lat.median), _ms(lat.mean), _ms(lat.p90), _ms(lat.p95), _ms(lat.p99),
                      _ms(lat.min), _ms(lat.std), f"{lat.cv:.1%}", f"{lat.throughput_per_s:.1f}",
                      _ms(r.init_ms), _ms(r.first_inference_ms), _human_bytes(r.memory.get("peak_rss_delta_bytes")))
    console.print(table)
    for r in report.runs:
        if r.compute is not None:
            console.print(f"{r.name}: compute only (no copies) median {_ms(r.compute.median)} ms, "
                          f"end-to-end median {_ms(r.latency.median)} ms")
    for c in report.comparison():
        console.print(f"{c['model']} vs {c['baseline']}: median latency ratio {c['ratio_median']:.3f} "
                      f"({c['speedup_median']:.2f}x speed-up), mean ratio {c['ratio_mean']:.3f}")
    for r in report.runs:
        if r.per_node:
            t = Table(title=f"{r.name}: top {top} nodes (ORT profiler, {r.per_node['iterations']} runs)")
            for col in ("node", "op", "provider", "mean us", "%"):
                t.add_column(col, justify="right" if col in ("mean us", "%") else "left")
            for row in r.per_node["nodes"][:top]:
                t.add_row(row["node"], row["op_type"], str(row["provider"]), f"{row['mean_us']:.1f}",
                          f"{row['percent']:.1f}")
            console.print(t)
            t2 = Table(title=f"{r.name}: by op type")
            for col in ("op", "nodes", "mean us", "%"):
                t2.add_column(col, justify="left" if col == "op" else "right")
            for row in r.per_node["op_types"][:top]:
                t2.add_row(row["op_type"], str(row["nodes"]), f"{row['mean_us']:.1f}", f"{row['percent']:.1f}")
            console.print(t2)
    for r in report.runs:
        for note in r.notes:
            click.echo(f"Note: {r.name}: {note}", err=True)
    for w in report.warnings:
        click.echo(f"Warning: {w}", err=True)


def _distinct(paths: dict[str, Path | None]) -> None:
    """Refuse one file in two roles: a report written over the model would destroy it."""
    seen: dict[Path, str] = {}
    for role, p in paths.items():
        if p is None:
            continue
        key = p.resolve()
        if key in seen and role not in ("--compare",):
            other = "the input file" if seen[key] in ("MODEL", "--compare") else f"also the {seen[key]} path"
            raise UsageError(f"{role} path {p} is {other}; choose another path")
        seen.setdefault(key, role)


def register(cli: click.Group) -> None:
    @cli.command("targets")
    @click.option("--device", default=None, metavar="ssh://user@host[:port]", help="Ask a device instead.")
    @click.option("--known-hosts", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--identity", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--insecure-accept-new-host-key", is_flag=True)
    @click.option("--remote-python", default="python3", show_default=True)
    @click.option("--remote-cache", default="~/.cache/graphprune", show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    def targets_cmd(device: str | None, known_hosts: Path | None, identity: Path | None,
                    insecure_accept_new_host_key: bool, remote_python: str, remote_cache: str,
                    as_json: bool) -> None:
        """List build/profile targets, whether each works here (or on --device), and why not."""
        from graphprune.targets import SshExecutor, SshOptions, get_target, names

        ex = None
        if device:
            ex = SshExecutor(device, SshOptions(known_hosts=known_hosts, identity=identity,
                                                accept_new_host_key=insecure_accept_new_host_key,
                                                remote_python=remote_python, remote_cache=remote_cache))
        rows = []
        for name in names():
            t = get_target(name)
            ok, why = t.available(ex)
            rows.append({"name": name, "available": ok, "detail": why, "summary": t.summary})
        if as_json:
            click.echo(json.dumps({"location": ex.location if ex else "local", "targets": rows}, indent=2))
            return
        from rich.table import Table

        table = Table(title=f"targets ({ex.location if ex else 'this machine'})")
        for col in ("target", "available", "detail", "what"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["name"], "yes" if r["available"] else "no", r["detail"], r["summary"])
        _console().print(table)

    @cli.command("build")
    @click.argument("model", type=click.Path(path_type=Path))
    @click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Engine path (default: beside the model).")
    @target_options
    def build_cmd(model: Path, output: Path | None, **kw: Any) -> None:
        """Build MODEL for a target: an optimised ONNX/.ort file (ORT) or an engine (TensorRT)."""
        target, options = options_from(kw)
        engine = target.build(model, output, options)
        where = "" if options.executor is None else f" on {options.executor.location}"
        secs = (engine.report.get("build") or {}).get("build_s")
        click.echo(f"built {engine.path} for {target.name}{where}" + (f" in {secs:.2f} s" if secs else ""))
        for key, path in engine.artifacts.items():
            size = path.stat().st_size if path.is_file() else None
            click.echo(f"  {key}: {path} ({_human_bytes(size)})")
        for note in (engine.report.get("build") or {}).get("notes") or []:
            click.echo(f"Note: {note}", err=True)

    @cli.command("profile")
    @click.argument("model", type=click.Path(path_type=Path))
    @click.option("--compare", type=click.Path(path_type=Path), default=None,
                  help="Second model/engine, timed interleaved with MODEL (A, B, A, B, ...).")
    @click.option("--warmup", type=click.FloatRange(0), default=0.2, show_default=True, help="Warm-up seconds.")
    @click.option("--iterations", type=click.IntRange(0), default=10, show_default=True, help="Minimum timed runs.")
    @click.option("--duration", type=click.FloatRange(0), default=1.0, show_default=True,
                  help="Minimum timed seconds per model.")
    @click.option("--inputs", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help=".npz with one array per model input (default: random).")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the report as JSON.")
    @click.option("--csv", "csv_out", type=click.Path(dir_okay=False, path_type=Path), help="Write a CSV summary.")
    @click.option("--per-node", is_flag=True, help="ORT profiler: time per node and op type.")
    @click.option("--top", type=click.IntRange(1), default=10, show_default=True)
    @click.option("--cv-warn", type=click.FloatRange(0), default=0.10, show_default=True,
                  help="Warn above this coefficient of variation.")
    @target_options
    def profile_cmd(model: Path, compare: Path | None, warmup: float, iterations: int, duration: float,
                    inputs: Path | None, seed: int, json_out: Path | None, csv_out: Path | None,
                    per_node: bool, top: int, cv_warn: float, **kw: Any) -> None:
        """Time MODEL (an ONNX model or a built engine) on a target; --compare times two side by side."""
        from graphprune.fileio import check_output_dir
        from graphprune.targets import ProfileOptions
        from graphprune.targets.report import write_csv, write_json

        _distinct({"MODEL": model, "--compare": compare, "--json": json_out, "--csv": csv_out})
        for out in (json_out, csv_out):
            if out is not None:
                check_output_dir(out)
        target, options = options_from(kw)
        timing = ProfileOptions(warmup_s=warmup, iterations=iterations, duration_s=duration, inputs_npz=inputs,
                                seed=seed, per_node=per_node, cv_warn=cv_warn)
        with tempfile.TemporaryDirectory(prefix="graphprune-profile-") as tmp:
            engines = [target.load(p, options, Path(tmp)) for p in ([model, compare] if compare else [model])]
            report = target.profile(engines, options, timing)
        if json_out is not None:  # files first: a failed write is then the only thing said
            write_json(json_out, report.to_dict())
        if csv_out is not None:
            write_csv(csv_out, report.csv_rows())
        render_report(report, top)
        sys.stdout.flush()
