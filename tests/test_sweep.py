"""Sweeps: ratios, Pareto marking, CSV/JSON/PNG outputs, resuming, device farms."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from graphprune.cli import cli
from graphprune.errors import UsageError
from graphprune.farm import Device, devices_from, spread
from graphprune.sweep import FIELDS, pareto, parse_ratios, sweep
from graphprune.sweep_plot import MISSING
from graphprune.targets import OrtOptions, ProfileOptions, TargetOptions
from graphprune.targets.executor import LocalExecutor
from models.zoo import ZOO

MODEL = ZOO["small_cnn"].path
FAST = ["--warmup", "0", "--iterations", "3", "--duration", "0.01", "--threads", "1"]
EVAL = '''
import os
from pathlib import Path

import onnx

LOG = Path(__file__).with_name("calls.txt")


def params(path):
    """Parameters in thousands (a stand-in for accuracy that falls as the model shrinks); logs each call."""
    with LOG.open("a") as f:
        f.write(path + "\\n")
    if "r0.5" in path and Path(__file__).with_name("fail").exists():
        raise RuntimeError("dataset not found")
    m = onnx.load(path)
    total = 0
    for t in m.graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        total += n
    return total / 1000.0
'''


def _cli(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _eval_file(tmp_path: Path) -> Path:
    path = tmp_path / "evalmod.py"
    path.write_text(EVAL)
    return path


def _calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.txt"
    return log.read_text().split() if log.exists() else []


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("text, values", [
    ("0.1:0.7:0.1", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]),
    ("0.25:0.75:0.25", [0.25, 0.5, 0.75]),
    ("0.5,0.25,0.5", [0.25, 0.5]),
    ("0.3", [0.3]),
])
def test_parse_ratios(text: str, values: list[float]) -> None:
    assert parse_ratios(text) == pytest.approx(values)


@pytest.mark.parametrize("bad", ["0.1:0.7", "0.5:0.1:0.1", "0:0.5:0.25", "0.5,1.0", "a:b:c", "0.1:0.5:0"])
def test_parse_ratios_rejects(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_ratios(bad)


def _row(point: str, lat: float | None, dense: float | None, q: float | None) -> dict[str, Any]:
    return {"point": point, "latency_ms": lat, "dense_ms": dense, "accuracy": q}


def test_pareto_front_minimises_relative_latency_and_maximises_quality() -> None:
    rows = [
        _row("dense", 10.0, None, 0.90),   # fastest? no: slowest, but the most accurate -> front
        _row("a", 6.0, 10.0, 0.88),        # front
        _row("b", 7.0, 10.0, 0.85),        # dominated by a (slower and worse)
        _row("c", 3.0, 10.0, 0.80),        # front (fastest)
        _row("d", 6.0, 10.0, 0.88),        # ties with a: neither dominates the other
        _row("e", 11.0, 10.0, 0.95),       # slower than dense but more accurate -> front
        _row("f", None, None, 0.99),       # not timed: never on the front
        _row("g", 3.5, 10.0, 0.80),        # dominated by c (same accuracy, slower)
    ]
    assert pareto(rows, "accuracy") == [True, True, False, True, True, True, False, False]
    # relative to each device's dense run: 5/10 on one device beats 6/20 on another only if faster
    farm = [_row("x", 5.0, 10.0, 0.8), _row("y", 6.0, 20.0, 0.8)]
    assert pareto(farm, "accuracy") == [False, True]


def test_sweep_cli_writes_csv_json_png_marks_the_front_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "sw"
    ev = _eval_file(tmp_path)
    args = ["sweep", MODEL, "--ratios", "0.25:0.75:0.25", "-t", "ort-cpu", "-o", out, "--eval", f"{ev}:params", *FAST]
    r = _cli(*args)
    assert r.exit_code == 0, r.output
    rows = _rows(out / "sweep.csv")
    assert list(rows[0]) == FIELDS
    assert [row["point"] for row in rows] == ["dense", "r0.25", "r0.5", "r0.75"]
    assert all(row["status"] == "ok" and row["device"] == "local" and float(row["latency_ms"]) > 0 for row in rows)
    accs = [float(row["accuracy"]) for row in rows]
    macs = [int(row["macs"]) for row in rows]
    assert accs == sorted(accs, reverse=True) and macs == sorted(macs, reverse=True) and macs[3] < macs[0]
    assert all(float(row["speedup"]) > 0 for row in rows[1:]) and rows[0]["speedup"] == ""
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["schema"] == "graphprune.sweep/1" and doc["pareto_by"] == "accuracy"
    assert [row["pareto"] for row in doc["rows"]] == pareto(doc["rows"], "accuracy")
    assert doc["rows"][0]["pareto"]  # the dense model is the most accurate point
    if importlib.util.find_spec("matplotlib") is not None:  # the test extra installs it; CI has it
        assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "graphprune[plot]" in r.stderr
    assert "Pareto" in r.stdout and "r0.75" in r.stdout and "accuracy" in r.stdout
    assert len(_calls(tmp_path)) == 4
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.onnx")}
    assert len(mtimes) == 3

    again = _cli(*args)  # resume: nothing left to do
    assert again.exit_code == 0, again.output
    assert "4 points were already done" in again.stdout
    assert len(_calls(tmp_path)) == 4
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.onnx")} == mtimes
    assert _rows(out / "sweep.csv") == rows

    other = _cli(*args[:-len(FAST)], "--criterion", "l1", *FAST)
    assert other.exit_code == 2 and "holds a sweep with another criterion" in other.stderr
    fresh = _cli(*args, "--fresh", "--no-plot")
    assert fresh.exit_code == 0 and "already done" not in fresh.stdout
    assert len(_calls(tmp_path)) == 8


def test_sweep_resumes_after_a_failing_evaluation(tmp_path: Path) -> None:
    out = tmp_path / "sw"
    ev = _eval_file(tmp_path)
    (tmp_path / "fail").touch()
    args = ["sweep", MODEL, "--ratios", "0.25,0.5", "-t", "ort-cpu", "-o", out, "--eval", f"{ev}:params",
            "--no-plot", *FAST]
    r = _cli(*args)
    assert r.exit_code == 1 and "--eval failed on r0.5" in r.stderr and "dataset not found" in r.stderr
    state = {row["point"]: row for row in json.loads((out / "sweep.json").read_text())["rows"]}
    assert state["r0.5"]["latency_ms"] > 0 and state["r0.5"]["accuracy"] is None  # timed, not evaluated
    pruned_at = (out / "small_cnn.r0.25.onnx").stat().st_mtime_ns
    (tmp_path / "fail").unlink()
    before = len(_calls(tmp_path))
    r = _cli(*args)
    assert r.exit_code == 0, r.output
    assert _calls(tmp_path)[before:] == [str(out / "small_cnn.r0.5.onnx")]  # only what was missing
    assert (out / "small_cnn.r0.25.onnx").stat().st_mtime_ns == pruned_at
    assert all(row["status"] == "ok" for row in _rows(out / "sweep.csv"))


def test_sweep_errors_are_one_line(tmp_path: Path) -> None:
    base = ["sweep", MODEL, "-t", "ort-cpu", "-o", tmp_path / "x"]
    for extra, needle in ((["--ratios", "0.9:0.1:0.1"], "--ratios"),
                          (["--ratios", "0.5", "--eval", "no_such_module_xyz:f"], "importing no_such_module_xyz"),
                          (["--ratios", "0.5", "--eval", "nocolon"], "module:function"),
                          (["--ratios", "0.5", "--device", "pi.local"], "expected 'local' or ssh://"),
                          (["--ratios", "0.5", "--device", "local", "--device", "local"], "given twice"),
                          (["--ratios", "0.5", "--round-to", "fast"], "neither an integer nor 'auto'")):
        r = _cli(*base, *extra)
        assert r.exit_code == 2, (extra, r.output)
        assert needle in r.stderr, (extra, r.stderr)


# device farms ------------------------------------------------------------------------------------
def test_spread_runs_devices_in_parallel_one_job_each() -> None:
    devices = [Device("a", LocalExecutor()), Device("b", LocalExecutor())]
    barrier = threading.Barrier(2, timeout=10)
    active = {"a": 0, "b": 0}
    peak = {"a": 0, "b": 0}
    lock = threading.Lock()

    def work(dev: Device, job: int) -> str:
        with lock:
            active[dev.name] += 1
            peak[dev.name] = max(peak[dev.name], active[dev.name])
        if job < 2:
            barrier.wait()  # deadlocks (and times out) unless the two devices really run at once
        time.sleep(0.01)
        with lock:
            active[dev.name] -= 1
        return dev.name

    done = spread(list(range(8)), devices, work, allowed=lambda j: {"b"} if j == 7 else None)
    assert [d.job for d in done] == list(range(8))
    assert peak == {"a": 1, "b": 1}
    assert done[7].device.name == "b" and {d.device.name for d in done[:2]} == {"a", "b"}
    with pytest.raises(RuntimeError, match="boom"):
        spread([1, 2, 3], devices, lambda d, j: (_ for _ in ()).throw(RuntimeError("boom")))


class CountingExecutor(LocalExecutor):
    """This machine, counting how many runner jobs overlap on it."""

    def __init__(self) -> None:
        super().__init__()
        self.active = 0
        self.peak = 0
        self.jobs = 0

    def run(self, job: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        self.active += 1
        self.peak = max(self.peak, self.active)
        self.jobs += 1
        try:
            return super().run(job, timeout)
        finally:
            self.active -= 1


def test_sweep_spreads_points_over_a_farm_and_names_the_device(tmp_path: Path) -> None:
    executors = [CountingExecutor(), CountingExecutor()]
    devices = devices_from(executors)
    assert [d.name for d in devices] == ["local", "local#2"]
    result = sweep(MODEL, [0.25, 0.5, 0.75], out_dir=tmp_path, devices=devices, plot=False,
                   options=TargetOptions(ort=OrtOptions(intra_op_threads=1)),
                   timing=ProfileOptions(warmup_s=0.0, iterations=3, duration_s=0.01))
    dense = [r for r in result.rows if r["point"] == "dense"]
    assert sorted(r["device"] for r in dense) == ["local", "local#2"]
    points = [r for r in result.rows if r["point"] != "dense"]
    assert len(points) == 3 and all(r["device"] in ("local", "local#2") and r["speedup"] > 0 for r in points)
    assert all(ex.peak == 1 and ex.jobs >= 2 for ex in executors)  # each device: one model at a time
    assert result.quality == "macs" and len(_rows(result.csv_path)) == 5


def test_png_degrades_with_a_clear_message_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = sweep(MODEL, [0.5], out_dir=tmp_path, options=TargetOptions(ort=OrtOptions(intra_op_threads=1)),
                   timing=ProfileOptions(warmup_s=0.0, iterations=3, duration_s=0.01))
    assert result.png_path is None and result.warnings == [MISSING] and "graphprune[plot]" in MISSING
    assert result.csv_path.is_file() and result.json_path.is_file() and not (tmp_path / "sweep.png").exists()


def test_sweep_round_to_auto_uses_the_latency_table(tmp_path: Path) -> None:
    result = sweep(ZOO["resnet18"].path, [0.5], out_dir=tmp_path / "sw", round_to="auto", cache_dir=tmp_path / "t",
                   points=1, plot=False, options=TargetOptions(ort=OrtOptions(intra_op_threads=1)),
                   timing=ProfileOptions(warmup_s=0.0, iterations=3, duration_s=0.01),
                   table_timing=ProfileOptions(warmup_s=0.0, iterations=3, duration_s=0.005))
    point = result.rows[-1]
    # round-to auto may move kept counts up to full width when the measured steps say so (timing noise
    # on a loaded machine): only that it ran from a table is asserted here
    assert point["point"] == "r0.5" and point["predicted_ms"] > 0 and point["macs_frac"] <= 1
    assert list((tmp_path / "t").glob("ort-cpu-*.json"))
    with pytest.raises(UsageError, match="magnitude"):
        sweep(MODEL, [0.5], out_dir=tmp_path / "o", round_to="auto", method="obspa", plot=False)


def test_sweep_with_sensitivity_records_it_and_refuses_round_to_auto(tmp_path: Path) -> None:
    out = tmp_path / "sens"
    r = _cli("sweep", MODEL, "--ratios", "0.5", "-t", "ort-cpu", "-o", out, "--sensitivity", "--no-plot", *FAST)
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["config"]["sensitivity"] is True
    assert [row["status"] for row in doc["rows"]] == ["ok", "ok"]
    r = _cli("sweep", MODEL, "--ratios", "0.5", "-t", "ort-cpu", "-o", tmp_path / "auto", "--sensitivity",
             "--round-to", "auto", *FAST)
    assert r.exit_code == 2 and "--sensitivity" in r.stderr
