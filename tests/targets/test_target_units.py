"""Pieces with exact answers: the shipped runner bundle, statistics, option parsing, error mapping."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import numpy as np
import pytest

from graphprune.commands.targets import parse_shapes, parse_size
from graphprune.errors import ModelLoadError, TargetError, TargetUnavailableError, UsageError
from graphprune.targets.executor import parse_runner_output, runner_source
from graphprune.targets.runner import RESULT_MARK, JobError, default_dim, resolve_shape
from graphprune.targets.stats import LatencyStats, aggregate_per_node, percentile, variance_warning


def test_runner_bundle_is_one_self_contained_script() -> None:
    src = runner_source()
    tree = ast.parse(src)
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "graphprune" not in imported
    assert imported <= {"__future__", "contextlib", "importlib", "json", "os", "platform", "shutil", "subprocess",
                        "sys", "tempfile", "time", "collections", "typing", "ctypes", "hashlib", "resource",
                        "traceback", "numpy", "cuda", "torch"}
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert {"ort_profile", "ort_build", "trt_build", "trt_profile", "device_facts", "main"} <= funcs
    assert isinstance(tree.body[-1], ast.If)  # the __main__ guard comes after every definition
    # -I -S: no site-packages at all, so no graphprune (and no numpy): facts still work
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", src], input=json.dumps({"op": "facts"}),
                          capture_output=True, text=True, check=True)
    payload = json.loads(proc.stdout.strip().splitlines()[-1][len(RESULT_MARK):])
    assert payload["ok"] and payload["facts"]["cpu_count"] >= 1
    assert "error" in payload["available"]["onnxruntime"]


def test_latency_stats_match_numpy() -> None:
    xs = list(np.random.default_rng(0).gamma(2.0, 1.0, size=101))
    s = LatencyStats.from_samples(xs)
    for q, v in ((50, s.median), (90, s.p90), (95, s.p95), (99, s.p99)):
        assert v == pytest.approx(np.percentile(xs, q))
    assert s.std == pytest.approx(np.std(xs, ddof=1)) and s.cv == pytest.approx(s.std / s.mean)
    assert s.throughput_per_s == pytest.approx(1000 / np.mean(xs)) and s.count == 101
    assert percentile([], 50) != percentile([], 50)  # nan
    assert LatencyStats.from_samples([2.0]).std == 0.0
    assert variance_warning(LatencyStats.from_samples([1, 1, 1, 10]), 0.1, "m") is not None
    assert variance_warning(LatencyStats.from_samples([1, 1.01, 0.99]), 0.1, "m") is None


def test_per_node_aggregation_drops_warmup_calls() -> None:
    ev = [["a", "Conv", "CPU", 100.0], ["a", "Conv", "CPU", 10.0], ["a", "Conv", "CPU", 10.0],
          ["b", "Relu", "CPU", 5.0], ["b", "Relu", "CPU", 5.0], ["b", "Relu", "CPU", 5.0]]
    out = aggregate_per_node({"iterations": 2, "events": ev})
    assert [(n["node"], n["mean_us"], n["calls"]) for n in out["nodes"]] == [("a", 10.0, 2), ("b", 5.0, 2)]
    assert out["op_types"][0]["percent"] == pytest.approx(100 * 10 / 15)


@pytest.mark.parametrize("value, expected", [
    (("x:1x3x224x224",), {"x": [1, 3, 224, 224]}),
    (("a:1x2,b:3",), {"a": [1, 2], "b": [3]}),
    (("input:0:1x3",), {"input:0": [1, 3]}),
    (("a:1", "b:2x2"), {"a": [1], "b": [2, 2]}),
])
def test_parse_shapes(value: tuple[str, ...], expected: dict[str, list[int]]) -> None:
    assert parse_shapes(value, "--shapes") == expected


@pytest.mark.parametrize("bad", ["x", "x:", ":1x2", "x:1xa", "x:-1"])
def test_parse_shapes_rejects(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_shapes((bad,), "--shapes")


def test_parse_size() -> None:
    assert parse_size("1G") == 1 << 30 and parse_size("512M") == 512 << 20 and parse_size("2GiB") == 2 << 30
    assert parse_size("1024") == 1024 and parse_size(None) is None
    with pytest.raises(UsageError):
        parse_size("big")


def test_symbolic_dims_defaults_and_checks() -> None:
    notes: list[str] = []
    assert resolve_shape("x", ["N", 3, "H", "W"], {}, notes) == [1, 3, 224, 224] and len(notes) == 3
    assert resolve_shape("ids", ["batch", "sequence"], {}, []) == [1, 16]
    assert default_dim(1, 3, "S") == 16
    assert resolve_shape("x", ["N", 3], {"x": [4, 3]}, []) == [4, 3]
    with pytest.raises(JobError, match="fixes it to 3"):
        resolve_shape("x", ["N", 3], {"x": [4, 5]}, [])


@pytest.mark.parametrize("stdout, rc, cls, needle", [
    (RESULT_MARK + json.dumps({"ok": False, "error": {"kind": "unavailable", "message": "no gpu"}}), 0,
     TargetUnavailableError, "no gpu"),
    (RESULT_MARK + json.dumps({"ok": False, "error": {"kind": "model", "message": "bad"}}), 0, ModelLoadError, "bad"),
    (RESULT_MARK + json.dumps({"ok": False, "error": {"kind": "usage", "message": "opt"}}), 0, UsageError, "opt"),
    ("", 127, TargetUnavailableError, "cannot start the runner"),
    ("", -11, TargetError, "crashed (SIGSEGV)"),
    ("", 3, TargetError, "exited with status 3"),
    (RESULT_MARK + "{not json", 0, TargetError, "not valid JSON"),
])
def test_runner_errors_map_to_typed_errors(stdout: str, rc: int, cls: type, needle: str) -> None:
    with pytest.raises(cls, match=needle.replace("(", r"\(").replace(")", r"\)")):
        parse_runner_output(stdout, "last words", rc, "ssh://h", "python3")


def test_runner_bundle_defines_every_name_it_uses() -> None:
    """The halves lose their graphprune import in the bundle: everything they use must still be defined."""
    import builtins

    tree = ast.parse(runner_source())
    defined = set(dir(builtins))
    for n in ast.walk(tree):
        if isinstance(n, ast.Import | ast.ImportFrom):
            defined.update((a.asname or a.name).split(".")[0] for a in n.names)
        elif isinstance(n, ast.FunctionDef | ast.ClassDef):
            defined.add(n.name)
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            defined.add(n.id)
        elif isinstance(n, ast.arg):
            defined.add(n.arg)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    assert used - defined == set()
