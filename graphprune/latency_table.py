"""Per-layer latency tables: the channel staircase of each layer shape, measured on a target.

Fewer MACs do not always mean less time: kernels work on blocks of channels, so latency is a staircase
in the channel count, and counts off the block (31, 33) can be slower than the round count above them.
A table holds, per layer shape (:class:`~graphprune.layer_shapes.LayerSig`), the time of single-op
models at a grid of (input channels, output channels): the fastest run, less the cost of an empty call,
on the scale of the dense model timed in the same interleaved run (:mod:`graphprune.calibrate`).

Lookups (:class:`Staircase` per axis) fit a block size and a penalty per alignment class to the
measured counts, so steps stay visible between measured points; the two axes combine as
``o + (f_in - o)(f_out - o)/(T - o)`` with ``o`` the fixed cost read off a point where both axes are
cut.  Tables are JSON, cached under ``~/.cache/graphprune/latency/`` per target, device class
(CPU/GPU/board, not the host name, so a farm of identical boards shares one table), library versions
and runtime settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graphprune.errors import GraphpruneError
from graphprune.layer_shapes import LayerSig
from graphprune.targets.base import TargetOptions
from graphprune.targets.report import write_json

log = logging.getLogger(__name__)

SCHEMA = "graphprune.latency/1"


def default_cache_dir() -> Path:
    root = os.environ.get("GRAPHPRUNE_CACHE")
    return Path(root) / "latency" if root else Path.home() / ".cache" / "graphprune" / "latency"


# lookups -----------------------------------------------------------------------------------------
_CLASSES = (16, 8, 4, 2, 1)


def _aligned(c: int) -> int:
    """The largest of 16, 8, 4, 2, 1 that divides ``c``."""
    return next(k for k in _CLASSES if c % k == 0)


def _interp(xs: Sequence[int], ys: Sequence[float], x: float) -> float:
    j = bisect_left(xs, x)
    if j < len(xs) and xs[j] == x:
        return ys[j]
    if j == 0:
        return ys[0] * x / xs[0] if xs[0] else ys[0]  # towards 0 below the smallest count
    if j == len(xs):
        return ys[-1] * x / xs[-1]
    t = (x - xs[j - 1]) / (xs[j] - xs[j - 1])
    return ys[j - 1] + t * (ys[j] - ys[j - 1])


class Staircase:
    """Latency along one channel axis: ``trend(ceil_B(c)) * penalty[alignment of c]``.

    ``B`` (1, 2, 4, 8 or 16) is the block: counts inside a block cost what the block's top count costs.
    The trend runs through the measured multiples of 8 (of 16 when ``B`` is 16), the penalty per
    alignment class says how much slower an odd count, or a multiple of only 2 or 4, runs than that;
    ``B`` and the penalties are what fits the measured counts best.  Measured counts read back as
    measured.  ORT CPU: output channels are a staircase of 8 (AVX2) or 16 (AVX-512); input channels off
    a multiple of 8 (or 4) run 1.2-1.5x slower."""

    def __init__(self, points: Mapping[int, float]) -> None:
        self.points = {int(c): float(t) for c, t in points.items()}
        items = sorted(self.points.items())
        self.all = ([c for c, _ in items], [t for _, t in items])
        self.trends = {q: ([c for c, _ in items if c % q == 0], [t for c, t in items if c % q == 0]) for q in (8, 16)}
        self.block, self.penalty = 1, dict.fromkeys(_CLASSES, 1.0)
        self.fitted = len(self.trends[16][0]) >= 2 and len(self.trends[8][0]) < len(items)
        if self.fitted:
            fits = [self._fit(b, items) for b in (1, 2, 4, 8, 16)]
            self.block, self.penalty, _ = min(fits, key=lambda f: f[2])

    def _fit(self, block: int, pts: Sequence[tuple[int, float]]) -> tuple[int, dict[int, float], float]:
        ratios: dict[int, list[float]] = {}
        for c, t in pts:
            ratios.setdefault(_aligned(c), []).append(t / self._base(c, block))
        pen = {k: float(np.median(ratios[k])) if k in ratios else 1.0 for k in _CLASSES}
        pen[16] = 1.0
        if block < 16:
            pen[8] = 1.0  # the trend runs through the multiples of 8
        for k in (8, 4, 2, 1):  # a class not measured behaves like the next coarser one
            if k not in ratios:
                pen[k] = pen[2 * k]
        err = sum(math.log(t / (self._base(c, block) * pen[_aligned(c)])) ** 2 for c, t in pts)
        return block, pen, err + 1e-9 * block  # ties: the smaller block

    def _base(self, c: int, block: int) -> float:
        return max(_interp(*self.trends[16 if block == 16 else 8], -(-c // block) * block), 1e-9)

    def __call__(self, c: float) -> float:
        ci = int(c)
        if ci in self.points:
            return self.points[ci]
        if not self.fitted:
            return _interp(*self.all, ci)
        return self._base(ci, self.block) * self.penalty[_aligned(ci)]


class LayerCurve:
    """Latency of one signature at any (cin, cout), from its measured rows."""

    def __init__(self, sig: LayerSig, rows: Mapping[tuple[int, int], float]) -> None:
        self.sig = sig
        full = (sig.cin, sig.cout)
        if full not in rows:
            raise GraphpruneError(f"latency table has no dense point for {sig.describe()}; run calibrate-latency")
        self.dense = rows[full]
        self.f_in = Staircase({ci: t for (ci, co), t in rows.items() if co == (ci * sig.multiplier if sig.multiplier
                                                                             else sig.cout)})
        self.f_out = Staircase({co: t for (ci, co), t in rows.items() if ci == sig.cin})
        estimates = [self._overhead(ci, co, t) for (ci, co), t in rows.items()
                     if not sig.multiplier and ci != sig.cin and co != sig.cout]
        floor = min(rows.values())
        self.overhead = min(max(float(np.median(estimates)) if estimates else 0.0, 0.0), 0.9 * floor)

    def _overhead(self, ci: int, co: int, t: float) -> float:
        a, b, d = self.f_in(ci), self.f_out(co), self.dense
        den = t + d - a - b
        return (t * d - a * b) / den if abs(den) > 1e-12 else 0.0

    def __call__(self, cin: int, cout: int) -> float:
        if self.sig.multiplier:
            return self.f_in(cin)
        o, d = self.overhead, self.dense
        a, b = self.f_in(cin), self.f_out(cout)
        if d - o <= 1e-12:
            return max(a, b)
        return o + (a - o) * (b - o) / (d - o)


# the table ---------------------------------------------------------------------------------------
def table_key(target: str, options: TargetOptions, facts: Mapping[str, Any]) -> dict[str, Any]:
    """What a measurement depends on: target, device class (not its name), library versions, settings."""
    f = facts.get("facts") or {}
    avail = facts.get("available") or {}
    device = {k: f.get(k) for k in ("machine", "cpu_model", "cpu_count", "cpu_affinity", "board",
                                    "jetson_power_mode")}
    device["gpus"] = [g.get("name") for g in f.get("gpus") or []]
    versions = {k: v.get("version") for k, v in avail.items() if isinstance(v, dict) and "version" in v}
    trt = options.trt
    config = {"ort": dataclasses.asdict(options.ort),
              "trt": {"precision": trt.precision, "strongly_typed": trt.strongly_typed, "dla_core": trt.dla_core,
                      "compute_capabilities": list(trt.compute_capabilities)}}
    return {"target": target, "device": device, "versions": versions, "config": config}


def key_hash(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


class LatencyTable:
    """Measured rows per signature, dense model latencies, and where they came from (one JSON file)."""

    def __init__(self, key: Mapping[str, Any], path: Path | None = None) -> None:
        self.key = dict(key)
        self.path = path
        self.layers: dict[str, dict[str, Any]] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self._curves: dict[str, tuple[int, LayerCurve]] = {}

    @property
    def name(self) -> str:
        return f"{self.key.get('target', 'target')}-{key_hash(self.key)[:16]}"

    @classmethod
    def open(cls, key: Mapping[str, Any], cache_dir: Path | None = None) -> LatencyTable:
        """The cached table for ``key`` (empty if none yet) in ``cache_dir``."""
        table = cls(key)
        table.path = (cache_dir or default_cache_dir()) / f"{table.name}.json"
        if table.path.is_file():
            table.merge_file(table.path)
        return table

    @classmethod
    def load(cls, path: Path) -> LatencyTable:
        data = _read(path)
        table = cls(data.get("key") or {}, path)
        table.merge_data(data)
        return table

    def merge_file(self, path: Path) -> None:
        data = _read(path)
        if data.get("key") != json.loads(json.dumps(self.key, default=str)):
            raise GraphpruneError(f"{path} holds a latency table for another target, device or setting; "
                                  "remove it or pass another --cache folder")
        self.merge_data(data)

    def merge_data(self, data: Mapping[str, Any]) -> None:
        for sid, entry in (data.get("layers") or {}).items():
            mine = self.layers.setdefault(sid, {"sig": entry["sig"], "rows": []})
            have = {(r[0], r[1]) for r in mine["rows"]}
            mine["rows"].extend(r for r in entry["rows"] if (r[0], r[1]) not in have)
        for k, v in (data.get("models") or {}).items():
            self.models.setdefault(k, v)

    def rows(self, sig: LayerSig) -> dict[tuple[int, int], float]:
        entry = self.layers.get(sig.id)
        return {} if entry is None else {(int(r[0]), int(r[1])): float(r[2]) for r in entry["rows"]}

    def add(self, sig: LayerSig, rows: Iterable[tuple[int, int, float, str]]) -> None:
        entry = self.layers.setdefault(sig.id, {"sig": dataclasses.asdict(sig), "rows": []})
        have = {(r[0], r[1]) for r in entry["rows"]}
        entry["rows"].extend([ci, co, round(ms, 6), dev] for ci, co, ms, dev in rows if (ci, co) not in have)
        entry["rows"].sort()

    def missing(self, sig: LayerSig, pairs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        have = self.rows(sig)
        return [p for p in pairs if p not in have]

    def curve(self, sig: LayerSig) -> LayerCurve:
        rows = self.rows(sig)
        cached = self._curves.get(sig.id)
        if cached is None or cached[0] != len(rows):
            cached = (len(rows), LayerCurve(sig, rows))
            self._curves[sig.id] = cached
        return cached[1]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "key": self.key, "name": self.name, "layers": self.layers, "models": self.models}

    def save(self, path: Path | None = None) -> Path:
        """Write atomically, merging rows another process wrote meanwhile."""
        dest = path or self.path
        if dest is None:
            raise GraphpruneError("latency table has no path; give one to save()")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_file():
            self.merge_data(_read(dest))
        write_json(dest, self.to_dict())
        self.path = dest
        return dest


def model_key(sha256: str | None, shapes: Mapping[str, Sequence[int]]) -> str:
    return f"{sha256}:{json.dumps({k: list(v) for k, v in sorted(shapes.items())})}"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise GraphpruneError(f"cannot read latency table {path} ({e}); remove it to measure again") from e
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise GraphpruneError(f"{path} is not a {SCHEMA} latency table; remove it to measure again")
    return data


def stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")

