"""Measuring latency tables: every layer shape of a model at a grid of channel counts, on a target.

:func:`calibrate` times what the cached table lacks (one table per device class of the farm), each
layer shape's single-op models in one interleaved run together with the dense model (whose time puts
runs made at different moments on one scale), the dense model itself, and the in-graph probe.  Only
missing points are measured; tables live under ``~/.cache/graphprune/latency/`` (or ``cache_dir``).
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from graphprune.analysis import Analysis, analyze
from graphprune.errors import UsageError
from graphprune.farm import Device, Done, NoSteps, Steps, devices_from, spread
from graphprune.latency_model import PROBE_KIND, TableLatency, probe_groups
from graphprune.latency_table import LatencyTable, key_hash, model_key, stamp, table_key
from graphprune.layer_shapes import Layer, LayerSig, baseline_model, layer_model, model_layers, sig_grid
from graphprune.plan import PruningPlan
from graphprune.rules import Space
from graphprune.targets.base import ProfileOptions, Target, TargetOptions
from graphprune.targets.registry import get_target
from graphprune.targets.report import ModelRun, ProfileReport
from graphprune.targets.stats import percentile

CHUNK = 48  # single-op models per profile call (interleaved, so noise hits all of them alike)
TABLE_TIMING = ProfileOptions(warmup_s=0.1, iterations=10, duration_s=0.05)
FAST_QUANTILE = 0.0  # percentile the table and the check use: the fastest run (see fast_ms)


def fast_ms(run: ModelRun, q: float | None = None) -> float:
    """The ``FAST_QUANTILE`` percentile of the samples (the fastest run): what a layer or model costs when
    nothing else takes the CPU away.  On a shared machine a run longer than the scheduler's time slice is
    preempted far more often than a short one, so medians of a whole model and of its single layers do
    not add up; fastest runs do (within a few percent here, where medians missed by 2x under load).
    Tables, predictions and the predicted-vs-measured check use it; reports give medians beside it."""
    s = sorted(run.samples_ms)
    return percentile(s, FAST_QUANTILE if q is None else q) if s else run.latency.median


def time_files(target: Target, options: TargetOptions, device: Device, paths: Sequence[Path],
               timing: ProfileOptions) -> ProfileReport:
    """Profile ``paths`` on ``device`` in one interleaved run (A, B, C, A, B, C, ...)."""
    opts = device.options(options)
    with tempfile.TemporaryDirectory(prefix="graphprune-engines-") as work:
        engines = [target.load(Path(p), opts, Path(work)) for p in paths]
        return target.profile(engines, opts, timing)


# measuring ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Job:
    cls: str  # device class (table key hash)
    sig: LayerSig | None  # None: the dense model (and the probe, with ``probe``)
    pairs: tuple[tuple[int, int], ...] = ()
    probe: bool = False


@dataclass
class Calibration:
    """One device class's table for one model, and what this run measured."""

    table: LatencyTable
    layers: list[Layer]
    dense_ms: float
    devices: list[str]
    measured: int = 0
    cached: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    probe: dict[str, Any] | None = None  # dense and "one unit less everywhere", timed side by side

    def latency(self, analysis: Analysis) -> TableLatency:
        """The cost model for ``analysis`` (of this calibration's model)."""
        return TableLatency(analysis, self.table, self.layers, self.dense_ms, probe=self.probe)


def prunable_spaces(analysis: Analysis, allow_lossy: bool = True) -> set[Space]:
    return {s for g in analysis.groups if g.indices and not g.frozen and g.n_units > 1
            and (allow_lossy or not g.lossy) for s in g.spaces}


def calibrate(
    model: str | Path,
    *,
    target: str | Target = "ort-cpu",
    options: TargetOptions | None = None,
    devices: Sequence[Device] | None = None,
    analysis: Analysis | None = None,
    cache_dir: Path | None = None,
    points: int = 6,
    timing: ProfileOptions | None = None,
    steps: Steps | None = None,
) -> list[Calibration]:
    """Measure what the tables lack for ``model`` (one table per device class) and the dense model."""
    t0 = time.perf_counter()
    steps = steps or NoSteps()
    tgt = get_target(target) if isinstance(target, str) else target
    options = options or TargetOptions()
    devs = list(devices) if devices else devices_from([options.executor])
    timing = timing or TABLE_TIMING
    if points < 1:
        raise UsageError("--points must be at least 1")
    analysis = analysis or analyze(str(model))
    layers = model_layers(analysis.view, options.shapes)
    live = prunable_spaces(analysis)
    grids: dict[str, tuple[LayerSig, set[tuple[int, int]]]] = {}
    for lay in layers:
        grid = sig_grid(lay.sig, lay.cin in live, lay.cout in live, points)
        grids.setdefault(lay.sig.id, (lay.sig, set()))[1].update(grid)
    mkey = model_key(_sha(model), options.shapes)

    classes: dict[str, tuple[LatencyTable, list[Device]]] = {}
    for d in devs:
        key = table_key(tgt.name, options, d.executor.facts())
        h = key_hash(key)
        if h not in classes:
            classes[h] = (LatencyTable.open(key, cache_dir), [])
        classes[h][1].append(d)
    jobs: list[_Job] = []
    cached = dict.fromkeys(classes, 0)
    for h, (table, _) in classes.items():
        before = len(jobs)
        for sig, pairs in grids.values():
            todo = table.missing(sig, sorted(pairs))
            cached[h] += len(pairs) - len(todo)
            jobs += [_Job(h, sig, tuple(todo[i:i + CHUNK])) for i in range(0, len(todo), CHUNK)]
        if mkey not in table.models and len(jobs) == before:  # chunks time the dense model too
            jobs.append(_Job(h, None))
        probe = table.models.get(mkey, {}).get("probe") or {}
        if probe.get("kind") != PROBE_KIND and sum(g.prunable for g in analysis.groups) >= 2:
            jobs.append(_Job(h, None, probe=True))
    members = {h: {d.name for d in ds} for h, (_, ds) in classes.items()}
    warnings: dict[str, list[str]] = {h: [] for h in classes}

    def work(dev: Device, job: _Job) -> list[float]:
        if job.probe:
            report = time_files(tgt, options, dev, [Path(model), probe_model()], replace(
                timing, iterations=max(timing.iterations, 10), duration_s=max(timing.duration_s, 0.2)))
            warnings[job.cls].extend(report.warnings)
            return [fast_ms(r) for r in report.runs]
        if job.sig is None:
            report = time_files(tgt, options, dev, [Path(model)], timing)
            warnings[job.cls].extend(report.warnings)
            return [fast_ms(report.runs[0])]
        return _time_pairs(tgt, options, dev, Path(model), job.sig, job.pairs, timing)

    def done(d: Done[_Job, list[float]]) -> None:
        table = classes[d.job.cls][0]
        dense, points = d.result[0], d.result[1:]
        if mkey not in table.models:
            table.models[mkey] = {"ms": dense, "device": d.device.name, "at": stamp(), "model": str(model),
                                  "shapes": options.shapes}
        factor = table.models[mkey]["ms"] / dense if dense > 0 else 1.0  # to the reference's scale
        if d.job.probe:
            table.models[mkey]["probe"] = {"kind": PROBE_KIND, "dense_ms": dense, "probe_ms": points[0],
                                           "device": d.device.name}
        elif d.job.sig is not None:
            table.add(d.job.sig, [(ci, co, ms * factor, d.device.name)
                                  for (ci, co), ms in zip(d.job.pairs, points, strict=True)])
        table.save()
        label = "in-graph alignment probe" if d.job.probe else d.job.sig.describe() if d.job.sig else "dense model"
        steps.advance(len(d.job.pairs) or 1, label)

    made: list[Path] = []

    def probe_model() -> Path:
        with lock:
            if not made:
                made.append(_probe_model(Path(model), analysis, Path(tmp)))
            return made[0]

    steps.add(sum(len(j.pairs) or 1 for j in jobs))
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="graphprune-probe-") as tmp:
        spread(jobs, devs, work, allowed=lambda j: members[j.cls], on_done=done)
    out = []
    for h, (table, ds) in classes.items():
        table.save()
        entry = table.models[mkey]
        out.append(Calibration(table, layers, float(entry["ms"]), [d.name for d in ds],
                               measured=sum(len(j.pairs) for j in jobs if j.cls == h), cached=cached[h],
                               seconds=time.perf_counter() - t0, warnings=warnings[h], probe=entry.get("probe")))
    return out


def _probe_model(model: Path, analysis: Analysis, folder: Path) -> Path:
    """The model with one unit less in every other prunable group: about the same work, layers off the
    grid next to layers on it, so layout conversions appear where the two meet."""
    from graphprune.model_io import file_sha256
    from graphprune.pruner import apply_plan

    by_id = {g.id: g for g in analysis.groups}
    kept = {gid: np.arange(by_id[gid].n_units - r) for gid, r in probe_groups(analysis).items()}
    plan = PruningPlan.from_units(analysis, kept)
    plan.model_sha256 = file_sha256(model)
    plan.meta = {"split": analysis.options.split_preference}
    out = folder / "probe.onnx"
    apply_plan(model, plan, output=out, verify=False)
    return out


def _sha(model: str | Path) -> str:
    from graphprune.model_io import file_sha256

    return file_sha256(Path(model))


def _time_pairs(target: Target, options: TargetOptions, dev: Device, dense: Path, sig: LayerSig,
                pairs: Sequence[tuple[int, int]], timing: ProfileOptions) -> list[float]:
    """[dense model ms, then each single-op model's ms less the cost of a call that computes nothing],
    all in one interleaved run: the dense model tells how fast the machine was during this run, so
    chunks timed at different moments of a shared machine can be put on one scale."""
    with tempfile.TemporaryDirectory(prefix="graphprune-latency-") as tmp:
        paths = [dense, Path(tmp) / "baseline.onnx"]
        onnx.save(baseline_model(), paths[1])
        for ci, co in pairs:
            paths.append(Path(tmp) / f"{ci}x{co}.onnx")
            onnx.save(layer_model(sig, ci, co), paths[-1])
        report = time_files(target, options, dev, paths, timing)
    fast = [fast_ms(r) for r in report.runs]
    return [fast[0]] + [max(m - fast[1], 1e-4) for m in fast[2:]]
