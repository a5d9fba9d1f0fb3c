"""Sweeps: prune at a series of ratios, time every point on the target, evaluate, find the Pareto front.

Three phases, so that timings never share a machine with other work: prune every point here, then
time them (spread over a device farm: one model at a time per device; each point interleaved with
the dense model on the same device, so the speed-up is read off one run), then evaluate accuracy with
the user's callback.  ``sweep.json`` in the output folder is written after every step and is the
resume state: a second run with the same configuration skips what is done.  ``sweep.csv`` and
``sweep.png`` (matplotlib, optional) are written at the end.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import io
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphprune.errors import GraphpruneError, UsageError
from graphprune.farm import Device, Done, NoSteps, Steps, devices_from, spread
from graphprune.latency_table import stamp
from graphprune.model_io import file_sha256
from graphprune.targets.base import ProfileOptions, Target, TargetOptions
from graphprune.targets.registry import get_target
from graphprune.targets.report import write_json, write_text_atomic

SCHEMA = "graphprune.sweep/1"
FIELDS = ["point", "ratio", "device", "target", "model", "macs", "params", "macs_frac", "params_frac",
          "latency_ms", "p90_ms", "min_ms", "cv", "dense_ms", "speedup", "predicted_ms", "accuracy", "pareto", "status"]
SWEEP_TIMING = ProfileOptions(warmup_s=0.2, iterations=10, duration_s=0.5)
Evaluate = Callable[[str], float]


def parse_ratios(text: str) -> list[float]:
    """``0.1:0.7:0.1`` (start:stop:step, stop included) or ``0.2,0.5`` -> sorted distinct ratios."""
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3 or parts[2] <= 0:
                raise ValueError
            start, stop, step = parts
            n = math.floor((stop - start) / step + 1e-9) + 1
            values = [round(start + k * step, 6) for k in range(max(n, 0))]
        else:
            values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"--ratios {text!r}: expected START:STOP:STEP (e.g. 0.1:0.7:0.1) or a list "
                         "such as 0.25,0.5") from None
    bad = [v for v in values if not 0 < v < 1]
    if not values or bad:
        raise UsageError(f"--ratios {text!r}: ratios must lie in (0, 1); got {bad or 'none'}")
    return sorted(set(values))


def load_evaluate(spec: str) -> Evaluate:
    """``module:function`` (imported from the current folder too) or ``path/to/file.py:function``."""
    mod_name, sep, fn_name = spec.rpartition(":")
    if not sep or not mod_name or not fn_name.isidentifier():
        raise UsageError(f"--eval {spec!r}: expected module:function or path/to/file.py:function")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise UsageError(f"--eval {spec!r}: no such file {path}")
            loader_spec = importlib.util.spec_from_file_location(f"graphprune_eval_{path.stem}", path)
            if loader_spec is None or loader_spec.loader is None:
                raise UsageError(f"--eval {spec!r}: cannot import {path}")
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(mod_name)
    except UsageError:
        raise
    except Exception as e:
        raise UsageError(f"--eval {spec!r}: importing {mod_name} failed ({type(e).__name__}: {e})") from e
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise UsageError(f"--eval {spec!r}: {mod_name} has no function {fn_name}")
    return fn


def pareto(rows: Sequence[dict[str, Any]], quality: str) -> list[bool]:
    """Non-dominated rows: no other row is at least as fast (relative to its device's dense model) and
    at least as good in ``quality`` (higher is better), and strictly better in one."""
    pts = [(_rel(r), r.get(quality)) for r in rows]
    out = []
    for i, (li, qi) in enumerate(pts):
        if li is None or qi is None:
            out.append(False)
            continue
        out.append(not any(j != i and lj is not None and qj is not None and lj <= li and qj >= qi
                           and (lj < li or qj > qi) for j, (lj, qj) in enumerate(pts)))
    return out


def _rel(row: dict[str, Any]) -> float | None:
    if row.get("latency_ms") is None:
        return None
    if row["point"] == "dense":
        return 1.0
    return row["latency_ms"] / row["dense_ms"] if row.get("dense_ms") else None


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]
    out_dir: Path
    json_path: Path
    csv_path: Path
    png_path: Path | None
    quality: str
    skipped: int = 0
    warnings: list[str] = field(default_factory=list)


class _State:
    """sweep.json: the configuration, and one row per point (per device for the dense model)."""

    def __init__(self, path: Path, config: dict[str, Any], resume: bool) -> None:
        config = json.loads(json.dumps(config, default=str))
        self.path, self.config, self.rows = path, config, []
        if path.is_file() and resume:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise GraphpruneError(f"cannot read {path} ({e}); pass --fresh to start over") from e
            if data.get("schema") != SCHEMA:
                raise UsageError(f"{path} is not a sweep state file; choose another output folder")
            old = data.get("config") or {}
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            if diff:
                raise UsageError(f"{path.parent} holds a sweep with another {', '.join(diff)}; pass --fresh to "
                                 "start over there, or choose another output folder")
            self.rows = list(data.get("rows") or [])

    def row(self, point: str, device: str | None = None) -> dict[str, Any] | None:
        return next((r for r in self.rows if r["point"] == point and (device is None or r["device"] == device)), None)

    def save(self, extra: dict[str, Any] | None = None) -> None:
        write_json(self.path, {"schema": SCHEMA, "config": self.config, "updated": stamp(), "rows": self.rows,
                               **(extra or {})})


def sweep(
    model: str | Path,
    ratios: Sequence[float],
    *,
    out_dir: str | Path,
    target: str | Target = "ort-cpu",
    options: TargetOptions | None = None,
    devices: Sequence[Device] | None = None,
    method: str = "magnitude",
    criterion: str = "l2",
    round_to: int | str = 1,
    global_ranking: bool = False,
    sensitivity: bool = False,
    evaluate: Evaluate | None = None,
    eval_name: str | None = None,
    timing: ProfileOptions | None = None,
    interleave: bool = True,
    resume: bool = True,
    cache_dir: Path | None = None,
    points: int = 6,
    table_timing: ProfileOptions | None = None,
    plot: bool = True,
    steps: Steps | None = None,
) -> SweepResult:
    """Prune ``model`` at each ratio, time every point on ``target`` (a farm when several devices are
    given), evaluate with ``evaluate(model_path) -> float``; write sweep.json/.csv/.png into ``out_dir``."""
    model = Path(model)
    tgt = get_target(target) if isinstance(target, str) else target
    options = options or TargetOptions()
    devs = list(devices) if devices else devices_from([options.executor])
    steps = steps or NoSteps()
    timing = timing or SWEEP_TIMING
    out = Path(out_dir)
    if not model.is_file():
        raise UsageError(f"{model}: no such file")
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    config = {"model": str(model.resolve()), "sha256": file_sha256(model), "target": tgt.name,
              "shapes": options.shapes, "ort": vars(options.ort), "precision": options.trt.precision,
              "method": method, "criterion": criterion, "round_to": round_to, "global": global_ranking,
              **({"sensitivity": True} if sensitivity else {}), "interleave": interleave, "eval": eval_name if evaluate is not None else None}
    state = _State(out / "sweep.json", config, resume)
    todo_before = {r["point"] for r in state.rows if r.get("status") == "ok"}
    labels = ["dense"] + [f"r{r:g}" for r in ratios]
    for d in devs:
        if state.row("dense", d.name) is None:
            state.rows.append(_new_row("dense", 0.0, d.name, tgt.name, model))
    for r, label in zip(ratios, labels[1:], strict=True):
        if state.row(label) is None:
            state.rows.append(_new_row(label, r, None, tgt.name, out / f"{model.stem}.{label}.onnx"))
    wanted = {d.name for d in devs}
    active = [row for row in state.rows if row["point"] in labels and (row["point"] != "dense"
                                                                       or row["device"] in wanted)]
    state.save()

    # 1. prune -----------------------------------------------------------------------------------
    to_prune = [row for row in active if row["point"] != "dense" and
                (row["macs"] is None or not Path(row["model"]).is_file())]
    fresh = {id(row) for row in to_prune}
    to_time = [row for row in active if row["latency_ms"] is None or id(row) in fresh]
    to_eval = [row for row in active if evaluate is not None and (row["accuracy"] is None or id(row) in fresh)]
    steps.add(len(to_prune) + len(to_time) + len(to_eval))
    dense_cost = _dense_cost(model)
    for row in active:
        if row["point"] == "dense":
            row.update(macs=dense_cost[0], params=dense_cost[1], macs_frac=1.0, params_frac=1.0)
    pruner = _Pruner(model, tgt, options, devs, method, criterion, round_to, global_ranking, cache_dir, points,
                     table_timing, steps, sensitivity)
    for row in to_prune:
        pruner.prune(row, dense_cost)
        row.update(latency_ms=None, p90_ms=None, min_ms=None, cv=None, dense_ms=None, speedup=None, accuracy=None,
                   status="pruned")
        state.save()
        steps.advance(1, f"pruned {row['point']}")

    # 2. time ------------------------------------------------------------------------------------
    def work(dev: Device, row: dict[str, Any]) -> dict[str, Any]:
        return _time_point(tgt, options, dev, model, row, timing, interleave)

    def done(d: Done[dict[str, Any], dict[str, Any]]) -> None:
        d.job.update(d.result, device=d.device.name, status="timed")
        state.save()
        steps.advance(1, f"timed {d.job['point']} on {d.device.name}")

    spread(to_time, devs, work, allowed=lambda row: {row["device"]} if row["point"] == "dense" else None,
           on_done=done)
    by_dev = {row["device"]: row["latency_ms"] for row in active if row["point"] == "dense"}
    for row in active:
        if row["point"] != "dense" and not interleave:
            row["dense_ms"] = by_dev.get(row["device"])
        if row["point"] != "dense" and row["dense_ms"] and row["latency_ms"]:
            row["speedup"] = row["dense_ms"] / row["latency_ms"]

    # 3. evaluate --------------------------------------------------------------------------------
    scores: dict[str, float] = {}
    for row in to_eval:
        if row["model"] not in scores:
            scores[row["model"]] = _call_eval(evaluate, row)  # type: ignore[arg-type]
        row["accuracy"] = scores[row["model"]]
        state.save()
        steps.advance(1, f"evaluated {row['point']}")

    for row in active:
        row["status"] = "ok" if row["latency_ms"] is not None and (evaluate is None or row["accuracy"] is not None) \
            else row["status"]
    quality = "accuracy" if evaluate is not None else "macs"
    for row, flag in zip(active, pareto(active, quality), strict=True):
        row["pareto"] = flag
    csv_path = out / "sweep.csv"
    write_csv(csv_path, active)
    png: Path | None = out / "sweep.png"
    warnings = []
    if plot:
        from graphprune.sweep_plot import draw

        problem = draw(active, png, title=f"{model.name} on {tgt.name}", quality=quality)  # type: ignore[arg-type]
        if problem:
            warnings.append(problem)
            png = None
    else:
        png = None
    state.save({"pareto_by": quality, "files": {"csv": str(csv_path), "png": str(png) if png else None}})
    return SweepResult(active, out, state.path, csv_path, png, quality,
                       skipped=sum(1 for r in active if r["point"] in todo_before), warnings=warnings)


def _new_row(point: str, ratio: float, device: str | None, target: str, path: Path) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(FIELDS)
    row.update(point=point, ratio=ratio, device=device, target=target, model=str(path), pareto=False,
               status="new")
    return row


def _dense_cost(model: Path) -> tuple[int, int]:
    from graphprune.cost import count
    from graphprune.graph import GraphView
    from graphprune.model_io import load_model

    c = count(GraphView(load_model(model, load_external=False).model))
    return c.macs, c.params


class _Pruner:
    """Prunes sweep points: graphprune.shrink, or the table-driven path for ``round_to="auto"``."""

    def __init__(self, model: Path, target: Target, options: TargetOptions, devices: Sequence[Device],
                 method: str, criterion: str, round_to: int | str, global_ranking: bool,
                 cache_dir: Path | None, points: int, table_timing: ProfileOptions | None, steps: Steps,
                 sensitivity: bool = False) -> None:
        self.model, self.method, self.criterion = model, method, criterion
        self.round_to, self.global_ranking, self.sensitivity = round_to, global_ranking, sensitivity
        self._ctx: tuple[Any, ...] | None = None
        self._table_args = (target, options, devices[:1], cache_dir, points, table_timing, steps)
        if round_to == "auto" and (method != "magnitude" or sensitivity):
            raise UsageError("--round-to auto works with --method magnitude without --sensitivity for now (both "
                             "go through shrink, which does not take a latency table yet)")

    def prune(self, row: dict[str, Any], dense: tuple[int, int]) -> None:
        dest = Path(row["model"])
        if self.round_to == "auto":
            from graphprune.allocation import AllocationOptions
            from graphprune.latency_target import prune_with

            loaded, analysis, lat = self._table()
            opts = AllocationOptions(ratio=row["ratio"], round_to="auto", latency=lat,
                                     global_ranking=self.global_ranking)
            p = prune_with(self.model, loaded, analysis, opts, criterion=self.criterion, output=dest)
            macs, params, predicted = p.macs_after, p.params_after, p.allocation.latency_ms
        else:
            import graphprune

            extra = {} if self.method == "magnitude" else {"method": self.method}
            r = graphprune.shrink(str(self.model), ratio=row["ratio"], criterion=self.criterion,
                                  round_to=int(self.round_to), global_ranking=self.global_ranking, output=str(dest),
                                  sensitivity=self.sensitivity, **extra)
            macs, params, predicted = r.macs_after, r.params_after, None
        row.update(macs=macs, params=params, macs_frac=macs / max(dense[0], 1), params_frac=params / max(dense[1], 1),
                   predicted_ms=predicted)

    def _table(self) -> tuple[Any, ...]:
        if self._ctx is None:
            from graphprune.analysis import analyze
            from graphprune.calibrate import calibrate
            from graphprune.model_io import load_model

            target, options, devices, cache_dir, points, timing, steps = self._table_args
            loaded = load_model(str(self.model))
            analysis = analyze(loaded)
            cal = calibrate(self.model, target=target, options=options, devices=devices, analysis=analysis,
                            cache_dir=cache_dir, points=points, timing=timing, steps=steps)[0]
            self._ctx = (loaded, analysis, cal.latency(analysis))
        return self._ctx


def _time_point(target: Target, options: TargetOptions, dev: Device, dense: Path, row: dict[str, Any],
                timing: ProfileOptions, interleave: bool) -> dict[str, Any]:
    from graphprune.calibrate import time_files

    path = Path(row["model"])
    if row["point"] == "dense" or not interleave:
        lat = time_files(target, options, dev, [path], timing).runs[0].latency
        return {"latency_ms": lat.median, "p90_ms": lat.p90, "min_ms": lat.min, "cv": lat.cv}
    runs = time_files(target, options, dev, [dense, path], timing).runs
    lat = runs[1].latency
    return {"latency_ms": lat.median, "p90_ms": lat.p90, "min_ms": lat.min, "cv": lat.cv,
            "dense_ms": runs[0].latency.median}


def _call_eval(evaluate: Evaluate, row: dict[str, Any]) -> float:
    try:
        value = float(evaluate(row["model"]))
    except Exception as e:
        raise GraphpruneError(f"--eval failed on {row['point']} ({row['model']}): {type(e).__name__}: {e}; "
                              "fix it and run the sweep again (finished points are kept)") from e
    if not math.isfinite(value):
        raise GraphpruneError(f"--eval returned {value} for {row['point']}; it must return a finite number")
    return value


def write_csv(dest: Path, rows: Sequence[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore")
    w.writeheader()
    w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    write_text_atomic(dest, buf.getvalue())
