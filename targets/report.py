"""Profile results: one :class:`ModelRun` per engine, a :class:`ProfileReport` around them, JSON and CSV.

The JSON layout is documented in ``SCHEMA.md`` beside this file; bump :data:`PROFILE_SCHEMA` when it changes.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphprune import __version__
from graphprune.targets.base import Engine, ProfileOptions
from graphprune.targets.stats import LatencyStats, aggregate_per_node, variance_warning

PROFILE_SCHEMA = "graphprune.profile/1"
BUILD_SCHEMA = "graphprune.build/1"
CSV_FIELDS = [
    "target", "location", "model", "sha256", "count", "min_ms", "mean_ms", "median_ms", "p90_ms", "p95_ms",
    "p99_ms", "max_ms", "std_ms", "cv", "throughput_per_s", "compute_median_ms", "init_ms",
    "first_inference_ms", "peak_rss_delta_bytes", "ratio_median_vs_first",
]


@dataclass
class ModelRun:
    """Timing of one engine."""

    name: str
    path: str | None
    sha256: str | None
    kind: str
    latency: LatencyStats
    compute: LatencyStats | None
    init_ms: float
    first_inference_ms: float
    memory: dict[str, Any]
    inputs: list[dict[str, Any]]
    config: dict[str, Any]
    samples_ms: list[float]
    per_node: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "path": self.path, "sha256": self.sha256, "kind": self.kind,
            "latency_ms": self.latency.to_dict(),
            "compute_latency_ms": self.compute.to_dict() if self.compute else None,
            "init_ms": self.init_ms, "first_inference_ms": self.first_inference_ms, "memory": self.memory,
            "inputs": self.inputs, "config": self.config, "per_node": self.per_node, "notes": self.notes,
            "samples_ms": self.samples_ms,
        }


@dataclass
class ProfileReport:
    """Everything one ``graphprune profile`` measured, plus where and with what."""

    target: str
    location: str
    facts: dict[str, Any]
    versions: dict[str, str]
    timing: dict[str, Any]
    runs: list[ModelRun]
    warnings: list[str] = field(default_factory=list)
    transfers: dict[str, list[str]] | None = None

    @classmethod
    def from_result(cls, target: str, location: str, engines: Sequence[Engine], result: dict[str, Any],
                    timing: ProfileOptions, transfers: dict[str, list[str]] | None = None) -> ProfileReport:
        runs: list[ModelRun] = []
        warnings: list[str] = []
        for eng, raw in zip(engines, result["runs"], strict=True):
            lat = LatencyStats.from_samples(raw["samples_ms"])
            comp = LatencyStats.from_samples(raw["compute_samples_ms"]) if raw.get("compute_samples_ms") else None
            per_node = aggregate_per_node(raw["per_node"]) if raw.get("per_node") else None
            run = ModelRun(
                name=eng.name, path=str(eng.path) if eng.path else None, sha256=eng.sha256, kind=eng.kind,
                latency=lat, compute=comp, init_ms=raw["init_ms"], first_inference_ms=raw["first_inference_ms"],
                memory=raw["memory"], inputs=raw["inputs"], config=raw.get("config", {}),
                samples_ms=list(raw["samples_ms"]), per_node=per_node, notes=list(raw.get("notes", [])),
            )
            runs.append(run)
            w = variance_warning(lat, timing.cv_warn, run.name)
            if w:
                warnings.append(w)
        facts = result.get("facts", {})
        throttled = facts.get("pi_throttled")
        if throttled and throttled.split("=")[-1] not in ("0x0", "0"):
            warnings.append(f"the Raspberry Pi reports throttling ({throttled}): numbers are not steady-state")
        tim = dict(result.get("timing", {}))
        tim.update(requested_warmup_s=timing.warmup_s, requested_iterations=timing.iterations,
                   requested_duration_s=timing.duration_s, seed=timing.seed)
        versions = {**result.get("versions", {}), "graphprune": __version__}
        return cls(target, location, facts, versions, tim, runs, warnings, transfers)

    def comparison(self) -> list[dict[str, Any]]:
        """Each run against the first: ratios below 1 mean faster than the first."""
        if len(self.runs) < 2:
            return []
        base = self.runs[0].latency
        out = []
        for r in self.runs[1:]:
            out.append({
                "baseline": self.runs[0].name, "model": r.name,
                "ratio_median": r.latency.median / base.median if base.median else None,
                "ratio_mean": r.latency.mean / base.mean if base.mean else None,
                "speedup_median": base.median / r.latency.median if r.latency.median else None,
            })
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": PROFILE_SCHEMA, "target": self.target,
            "device": {"location": self.location, "facts": self.facts}, "versions": self.versions,
            "timing": self.timing, "runs": [r.to_dict() for r in self.runs], "comparison": self.comparison(),
            "warnings": self.warnings, "transfers": self.transfers,
        }

    def csv_rows(self) -> list[dict[str, Any]]:
        rows = []
        base = self.runs[0].latency.median if self.runs else None
        for r in self.runs:
            lat = r.latency
            rows.append({
                "target": self.target, "location": self.location, "model": r.name, "sha256": r.sha256,
                "count": lat.count, "min_ms": lat.min, "mean_ms": lat.mean, "median_ms": lat.median,
                "p90_ms": lat.p90, "p95_ms": lat.p95, "p99_ms": lat.p99, "max_ms": lat.max, "std_ms": lat.std,
                "cv": lat.cv, "throughput_per_s": lat.throughput_per_s,
                "compute_median_ms": r.compute.median if r.compute else "", "init_ms": r.init_ms,
                "first_inference_ms": r.first_inference_ms,
                "peak_rss_delta_bytes": r.memory.get("peak_rss_delta_bytes"),
                "ratio_median_vs_first": lat.median / base if base else "",
            })
        return rows


def write_text_atomic(dest: Path, text: str) -> None:
    """Write a small text file atomically (reports, JSON, CSV)."""
    from graphprune.fileio import write_text_atomic as write

    write(dest, text)


def write_json(dest: Path, data: dict[str, Any]) -> None:
    write_text_atomic(dest, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_csv(dest: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(dest, buf.getvalue())
