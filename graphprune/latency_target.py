"""Pruning to a latency: allocation driven by a measured table, then predicted vs measured.

:func:`shrink_to_latency` calibrates (or reads the cached table), prunes (globally, by default) until
the table predicts the target, proves and saves the result through :func:`graphprune.apply_plan`, then
times dense and pruned side by side on the device and reports predicted vs measured.  With no target
it prunes at a ratio with ``round_to="auto"`` (the table's step edges).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from graphprune.allocation import Allocation, AllocationOptions, allocate
from graphprune.analysis import Analysis, analyze
from graphprune.calibrate import Calibration, calibrate, fast_ms, time_files
from graphprune.cost import count
from graphprune.errors import UsageError
from graphprune.farm import Device, Steps, devices_from
from graphprune.graph import GraphView
from graphprune.importance import ImportanceOptions, score_groups
from graphprune.inputs import random_inputs
from graphprune.model_io import LoadedModel, load_model
from graphprune.plan import PruningPlan
from graphprune.targets.base import ProfileOptions, Target, TargetOptions
from graphprune.targets.registry import get_target
from graphprune.verify import VerifyResult


@dataclass
class Pruned:
    """A model pruned with an allocation graphprune.shrink cannot take yet (latency, round_to=auto)."""

    model: onnx.ModelProto
    output: Path | None
    allocation: Allocation
    verify: VerifyResult | None
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    warnings: list[str] = field(default_factory=list)
    allocation_round_to: int | str = 1


def prune_with(source: str | Path, loaded: LoadedModel, analysis: Analysis, options: AllocationOptions, *,
               criterion: str = "l2", seed: int = 0, output: str | Path | None = None, verify: bool = True,
               write: bool = True) -> Pruned:
    """Score, allocate with ``options``, then slice, prove and save through :func:`graphprune.apply_plan`."""
    from graphprune.pruner import apply_plan

    if criterion == "activation":
        feeds = [random_inputs(analysis.view, batch=4, seed=seed + k) for k in range(4)]
    else:
        feeds = []
    scores = score_groups(analysis, ImportanceOptions(criterion=criterion, seed=seed), feeds=feeds)
    allocation = allocate(analysis, scores.scores, options)
    plan = PruningPlan.from_units(analysis, allocation.kept)
    plan.model_sha256 = loaded.sha256
    plan.meta = {"criterion": criterion, "ratio": allocation.ratio, "global": options.global_ranking,
                 "round_to": options.round_to, "split": "heads", "target_latency_ms": options.target_latency_ms,
                 "predicted_ms": allocation.latency_ms}
    res = apply_plan(source, plan, output=output, verify=verify, write=write)
    after = count(GraphView(res.model))
    return Pruned(res.model, res.output, allocation, res.verify, analysis.cost.macs, after.macs,
                  analysis.cost.params, after.params, list(scores.warnings) + allocation.warnings, options.round_to)


@dataclass
class LatencyShrinkResult:
    pruned: Pruned
    target_ms: float | None
    predicted_ms: float
    dense_predicted_ms: float
    calibration: Calibration
    measured_dense_ms: float | None = None
    measured_ms: float | None = None  # the table's statistic (fastest run), like the prediction
    device: str | None = None
    measured_median_ms: float | None = None

    @property
    def predicted_now_ms(self) -> float | None:
        """The prediction rescaled by how fast the dense model runs now vs when the table was made
        (a shared or warmer machine moves both)."""
        if self.measured_dense_ms is None:
            return None
        return self.predicted_ms * self.measured_dense_ms / self.calibration.dense_ms

    @property
    def error(self) -> float | None:
        """(predicted - measured) / measured, with the prediction rescaled to this run's dense time."""
        p = self.predicted_now_ms
        return None if p is None or not self.measured_ms else (p - self.measured_ms) / self.measured_ms

    def report(self) -> dict[str, Any]:
        p = self.pruned
        return {
            "output": str(p.output) if p.output else None, "target_ms": self.target_ms,
            "predicted_ms": self.predicted_ms, "predicted_now_ms": self.predicted_now_ms,
            "measured_ms": self.measured_ms, "measured_median_ms": self.measured_median_ms,
            "dense_ms": {"table": self.calibration.dense_ms, "measured": self.measured_dense_ms,
                         "predicted": self.dense_predicted_ms},
            "error": self.error, "device": self.device, "ratio": p.allocation.ratio,
            "macs": {"before": p.macs_before, "after": p.macs_after},
            "params": {"before": p.params_before, "after": p.params_after},
            "table": str(self.calibration.table.path),
            "verify": None if p.verify is None else {"passed": p.verify.passed, "max_abs_diff": p.verify.max_abs_diff},
            "warnings": p.warnings,
        }

    def summary(self) -> str:
        p = self.pruned
        lines = [
            f"MACs   {p.macs_before:,} -> {p.macs_after:,} ({100 * p.macs_after / max(p.macs_before, 1):.1f}%)",
            f"params {p.params_before:,} -> {p.params_after:,} ({100 * p.params_after / max(p.params_before, 1):.1f}%)",
            (f"latency target {self.target_ms:.3f} ms: " if self.target_ms is not None
             else f"ratio {p.allocation.ratio:g}, round_to={p.allocation_round_to}: ")
            + f"predicted {self.predicted_ms:.3f} ms (dense {self.calibration.dense_ms:.3f} ms measured when the "
            "table was made)",
        ]
        if self.measured_ms is not None and self.measured_dense_ms is not None:
            met = "" if self.target_ms is None else \
                "target met; " if self.measured_ms <= self.target_ms else "target missed; "
            lines.append(f"measured {self.measured_ms:.3f} ms fastest run ({met}median "
                         f"{self.measured_median_ms:.3f} ms), "
                         f"dense {self.measured_dense_ms:.3f} ms, side by side on {self.device}; "
                         f"prediction vs measurement {100 * (self.error or 0):+.1f}%")
            drift = self.measured_dense_ms / self.calibration.dense_ms - 1
            if abs(drift) > 0.05:
                lines.append(f"note: the dense model ran {100 * abs(drift):.0f}% {'slower' if drift > 0 else 'faster'}"
                             f" than when the table was measured; the prediction is rescaled by that "
                             f"({self.predicted_now_ms:.3f} ms) before comparing")
        lines.append("verify " + (p.verify.summary() if p.verify else "skipped (--no-verify)"))
        return "\n".join(lines)


def shrink_to_latency(
    model: str | Path,
    target_ms: float | None,
    *,
    ratio: float = 0.0,
    target: str | Target = "ort-cpu",
    options: TargetOptions | None = None,
    devices: Sequence[Device] | None = None,
    cache_dir: Path | None = None,
    points: int = 6,
    timing: ProfileOptions | None = None,
    measure_timing: ProfileOptions | None = None,
    criterion: str = "l2",
    global_ranking: bool = True,
    round_to: int | str = "auto",
    max_ratio: float = 0.9,
    ignore: tuple[str, ...] = (),
    allow_lossy: bool = False,
    verify: bool = True,
    output: str | Path | None = None,
    write: bool = True,
    measure: bool = True,
    seed: int = 0,
    steps: Steps | None = None,
) -> LatencyShrinkResult:
    """Prune ``model`` until the measured per-layer table predicts ``target_ms`` or less, then time
    dense and pruned side by side on the (first) device and report predicted vs measured.

    With ``target_ms=None`` it prunes at ``ratio`` instead (what ``shrink --round-to auto`` needs: the
    table's step edges) and reports the same way."""
    from graphprune.pruner import default_output

    tgt = get_target(target) if isinstance(target, str) else target
    options = options or TargetOptions()
    devs = list(devices) if devices else devices_from([options.executor])
    loaded = load_model(str(model))
    analysis = analyze(loaded)
    cal = calibrate(model, target=tgt, options=options, devices=devs[:1], analysis=analysis, cache_dir=cache_dir,
                    points=points, timing=timing, steps=steps)[0]
    lat = cal.latency(analysis)
    opts = AllocationOptions(ratio=ratio if target_ms is None else 0.0, latency=lat, global_ranking=global_ranking,
                             target_latency_ms=None if target_ms is None else float(target_ms), round_to=round_to,
                             max_ratio=max_ratio, ignore=tuple(ignore), allow_lossy=allow_lossy)
    out = Path(output) if output is not None else default_output(Path(model))
    pruned = prune_with(model, loaded, analysis, opts, criterion=criterion, seed=seed, output=out, verify=verify,
                        write=write or measure)
    result = LatencyShrinkResult(pruned, target_ms, float(pruned.allocation.latency_ms or cal.dense_ms),
                                 lat.predict({}), cal)
    if measure and pruned.output is not None:
        dev = devs[0]
        report = time_files(tgt, options, dev, [Path(model), pruned.output],
                            measure_timing or ProfileOptions(warmup_s=0.3, iterations=20, duration_s=1.0))
        result.measured_dense_ms, result.measured_ms = (fast_ms(r) for r in report.runs)
        result.measured_median_ms = report.runs[1].latency.median
        result.device = dev.name
        pruned.warnings.extend(report.warnings)
    return result


def parse_latency(text: str) -> float:
    """``5ms``, ``5 ms``, ``0.005s``, ``800us``, ``5`` (milliseconds) -> milliseconds."""
    s = text.strip().lower().replace(" ", "")
    for suffix, scale in (("ms", 1.0), ("us", 1e-3), ("µs", 1e-3), ("s", 1e3)):
        if s.endswith(suffix):
            s, factor = s[: -len(suffix)], scale
            break
    else:
        factor = 1.0
    try:
        value = float(s) * factor
    except ValueError:
        raise UsageError(f"--target-latency {text!r}: expected a time such as 5ms, 800us or 0.005s") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"--target-latency {text!r}: must be a positive time")
    return value
