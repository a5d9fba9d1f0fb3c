"""ONNX Runtime half of the device runner: sessions from options, build outputs, timing, per-node profile.

Like ``runner.py`` it imports only the standard library, numpy and (lazily) onnxruntime; it is appended
to ``runner.py`` when shipped.  XNNPACK follows ORT's advice: XNNPACK gets the threads, ORT's own
intra-op pool is one thread without spinning.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

# --- bundle: drop from here (runner.py defines these names in the shipped bundle) ---
from graphprune.targets.runner import (
    JobError,
    import_module,
    make_inputs,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
    timed_loop,
    versions,
)

# --- bundle: drop to here ---

_ORT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
               "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def ort_session(ort: Any, path: str, cfg: dict[str, Any], *, save_to: str | None = None,
                save_format: str | None = None, profile_prefix: str | None = None) -> tuple[Any, dict[str, Any]]:
    """An InferenceSession configured from ``cfg``; returns it with the settings actually used."""
    available = list(ort.get_available_providers())
    providers: list[Any] = list(cfg.get("providers") or ["CPUExecutionProvider"])
    options = [dict(o) for o in (cfg.get("provider_options") or [{} for _ in providers])]
    for p in providers:
        if p not in available:
            raise JobError("unavailable", f"{p} is not available in onnxruntime {ort.__version__} here "
                                          f"(available providers: {', '.join(available)})")
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _ORT_LEVELS[cfg.get("graph_opt_level", "all")])
    intra, inter, spin = cfg.get("intra_op_threads"), cfg.get("inter_op_threads"), cfg.get("spinning")
    xnn_mode = cfg.get("xnnpack", "auto")
    use_xnn = xnn_mode != "off" and "XnnpackExecutionProvider" in available and save_to is None
    if xnn_mode == "on" and "XnnpackExecutionProvider" not in available:
        raise JobError("unavailable", "XnnpackExecutionProvider is not in this onnxruntime build "
                                      f"(available providers: {', '.join(available)})")
    if use_xnn:  # ORT's advice: XNNPACK owns the threads, ORT's own pool is 1 thread without spinning
        xnn_threads = intra or os.cpu_count() or 1
        providers.insert(0, "XnnpackExecutionProvider")
        options.insert(0, {"intra_op_num_threads": str(xnn_threads)})
        intra, spin = 1, False if spin is None else spin
    if intra is not None:
        so.intra_op_num_threads = int(intra)
    if inter is not None:
        so.inter_op_num_threads = int(inter)
        if int(inter) > 1:
            so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    if spin is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
    if save_to is not None:
        so.optimized_model_filepath = save_to
        if save_format == "ORT":
            so.add_session_config_entry("session.save_model_format", "ORT")
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(path, sess_options=so, providers=providers, provider_options=options)
    except Exception as e:
        kind = "model" if "INVALID_PROTOBUF" in str(e) or "INVALID_GRAPH" in str(e) else "target"
        raise JobError(kind, f"onnxruntime could not load {os.path.basename(path)}: {e}") from e
    fell_back = [p for p in providers if p not in ("CPUExecutionProvider", "XnnpackExecutionProvider")
                 and p not in sess.get_providers()]
    if fell_back:
        raise JobError("unavailable", f"onnxruntime fell back to CPU: {', '.join(fell_back)} did not load "
                                      "(CUDA, cuDNN or TensorRT libraries missing or of another version?)")
    used = {"providers": list(sess.get_providers()), "requested_providers": providers,
            "provider_options": options, "intra_op_threads": so.intra_op_num_threads,
            "inter_op_threads": so.inter_op_num_threads, "spinning": spin, "xnnpack": use_xnn,
            "xnnpack_threads": int(options[0]["intra_op_num_threads"]) if use_xnn else None,
            "graph_opt_level": cfg.get("graph_opt_level", "all")}
    return sess, used


def ort_build(job: dict[str, Any]) -> dict[str, Any]:
    ort = import_module("onnxruntime", "install it with 'pip install onnxruntime'")
    b, cfg = job["build"], job.get("ort") or {}
    out: dict[str, str] = {}
    t0 = time.perf_counter()
    _, used = ort_session(ort, b["model"], cfg, save_to=b["optimized_onnx"])
    out["optimized_onnx"] = b["optimized_onnx"]
    if b.get("ort_format"):
        ort_session(ort, b["model"], cfg, save_to=b["ort_format"], save_format="ORT")
        out["ort"] = b["ort_format"]
    return {"files": out, "build_s": round(time.perf_counter() - t0, 6), "config": used,
            "versions": versions(ort)}


def _ort_compute_fn(ort: Any, sess: Any, feeds: dict[str, Any]) -> Callable[[], float | None] | None:
    """GPU providers: time with inputs and outputs already on the device (IOBinding), no host copies."""
    if not any(p in sess.get_providers()[0] for p in ("CUDA", "Tensorrt")):
        return None
    binding = sess.io_binding()
    for name, arr in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr, "cuda", 0))
    for o in sess.get_outputs():
        binding.bind_output(o.name, "cuda")

    def run() -> float:
        t0 = time.perf_counter()
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return (time.perf_counter() - t0) * 1e3

    return run


def _ort_run_fn(sess: Any, feeds: dict[str, Any]) -> Callable[[], float | None]:
    def run() -> None:
        sess.run(None, feeds)

    return run


def ort_profile(job: dict[str, Any]) -> dict[str, Any]:
    ort = import_module("onnxruntime", "install it with 'pip install onnxruntime'")
    cfg, prof = job.get("ort") or {}, job["profile"]
    entries: list[dict[str, Any]] = []
    fns: list[Callable[[], float | None]] = []
    computes: list[Callable[[], float | None] | None] = []
    for path in prof["models"]:
        exact = reset_peak_rss()
        rss0, hwm0 = rss_bytes(), peak_rss_bytes()
        t0 = time.perf_counter()
        sess, used = ort_session(ort, path, cfg)
        init_ms = (time.perf_counter() - t0) * 1e3
        notes: list[str] = []
        specs = [(i.name, list(i.shape), _ORT_TYPES.get(i.type, "float32")) for i in sess.get_inputs()]
        feeds, info = make_inputs(specs, prof, notes)
        t0 = time.perf_counter()
        try:
            sess.run(None, feeds)
        except Exception as e:
            shapes = ", ".join(f"{i['name']}:{'x'.join(map(str, i['shape']))}" for i in info)
            raise JobError("target", f"onnxruntime failed to run {os.path.basename(path)} on inputs {shapes} "
                                     f"({e}); set the input shapes with --shapes") from e
        first_ms = (time.perf_counter() - t0) * 1e3
        entries.append({"model": path, "init_ms": init_ms, "first_inference_ms": first_ms, "config": used,
                        "inputs": info, "notes": notes, "memory": {
                            "rss_delta_bytes": rss_bytes() - rss0,
                            "peak_rss_delta_bytes": peak_rss_bytes() - (rss0 if exact else hwm0),
                            "peak_exact": exact}})
        fns.append(_ort_run_fn(sess, feeds))
        computes.append(_ort_compute_fn(ort, sess, feeds))
    e2e, _, timing = timed_loop(fns, prof)
    for i, entry in enumerate(entries):
        entry["samples_ms"] = e2e[i]
        entry["compute_samples_ms"] = None
        comp_fn = computes[i]
        if comp_fn is not None:  # a separate, shorter pass: compute only
            entry["compute_samples_ms"] = timed_loop([comp_fn], dict(prof, warmup_s=0.0))[0][0]
        entry["memory"]["peak_rss_bytes"] = peak_rss_bytes()
        if prof.get("per_node"):
            entry["per_node"] = ort_per_node(ort, prof["models"][i], cfg, prof)
    return {"runs": entries, "timing": timing, "versions": versions(ort)}


def ort_per_node(ort: Any, path: str, cfg: dict[str, Any], prof: dict[str, Any]) -> dict[str, Any]:
    """ORT's profiler on a separate session (it slows every run); the host aggregates the kernel events."""
    with tempfile.TemporaryDirectory(prefix="graphprune-prof-") as tmp:
        sess, _ = ort_session(ort, path, cfg, profile_prefix=os.path.join(tmp, "ort"))
        feeds, _ = make_inputs([(i.name, list(i.shape), _ORT_TYPES.get(i.type, "float32"))
                                for i in sess.get_inputs()], prof, [])
        n = max(1, int(prof.get("per_node_iterations", 10)))
        for _ in range(n + 1):  # the first run is a warm-up; its events are dropped below
            sess.run(None, feeds)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    rows = []
    for ev in events:
        name = ev.get("name", "")
        if ev.get("cat") == "Node" and name.endswith("_kernel_time"):
            args = ev.get("args") or {}
            rows.append([name[: -len("_kernel_time")], args.get("op_name", "?"), args.get("provider"),
                         float(ev.get("dur", 0))])
    return {"iterations": n, "events": rows}


# ------------------------------------------------------------------------------------------------ main
