"""Latency statistics from raw samples (computed on the host, so local and remote runs agree)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(sorted_ms: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on pre-sorted data."""
    if not sorted_ms:
        return math.nan
    pos = (len(sorted_ms) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (pos - lo)


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one series of latencies, in milliseconds."""

    count: int
    min: float
    max: float
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    std: float
    cv: float  # coefficient of variation: std / mean
    throughput_per_s: float  # inferences per second at the mean latency

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyStats:
        s = sorted(float(x) for x in samples_ms)
        n = len(s)
        if n == 0:
            nan = math.nan
            return cls(0, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan)
        mean = sum(s) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in s) / (n - 1)) if n > 1 else 0.0
        return cls(
            count=n, min=s[0], max=s[-1], mean=mean, median=percentile(s, 50), p90=percentile(s, 90),
            p95=percentile(s, 95), p99=percentile(s, 99), std=std, cv=std / mean if mean > 0 else math.nan,
            throughput_per_s=1000.0 / mean if mean > 0 else math.nan,
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def variance_warning(stats: LatencyStats, threshold: float, label: str) -> str | None:
    """A hint when the spread is too large for the numbers to be trusted."""
    if stats.count > 1 and stats.cv == stats.cv and stats.cv > threshold:
        return (
            f"{label}: latency varies a lot (coefficient of variation {stats.cv:.0%} > {threshold:.0%}); "
            "close other programs, pin the CPU governor to 'performance', check for thermal throttling, "
            "or measure longer (--duration)"
        )
    return None


def aggregate_per_node(raw: dict[str, Any]) -> dict[str, Any]:
    """ORT profiler kernel events ``[node, op, provider, dur_us]`` -> mean time per node and per op type.

    The runner's first profiled run is a warm-up: only the last ``iterations`` calls of each node count.
    """
    n = int(raw.get("iterations", 1))
    per: dict[str, dict[str, Any]] = {}
    for node, op, provider, dur in raw.get("events", []):
        d = per.setdefault(node, {"node": node, "op_type": op, "provider": provider, "durs": []})
        d["durs"].append(float(dur))
    nodes = []
    ops: dict[str, dict[str, Any]] = {}
    for d in per.values():
        durs = d.pop("durs")[-n:]
        d["calls"] = len(durs)
        d["mean_us"] = sum(durs) / len(durs)
        nodes.append(d)
        o = ops.setdefault(d["op_type"], {"op_type": d["op_type"], "nodes": 0, "mean_us": 0.0})
        o["nodes"] += 1
        o["mean_us"] += d["mean_us"]
    total = sum(d["mean_us"] for d in nodes)
    for row in [*nodes, *ops.values()]:
        row["percent"] = 100.0 * row["mean_us"] / total if total else 0.0
    return {
        "iterations": n,
        "total_us": total,
        "nodes": sorted(nodes, key=lambda r: -r["mean_us"]),
        "op_types": sorted(ops.values(), key=lambda r: -r["mean_us"]),
    }
