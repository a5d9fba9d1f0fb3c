"""TensorRT half of the device runner: build (parser, profiles, precision, timing cache) and GPU timing.

One code path for ``tensorrt`` (10.x and 11.x) and ``tensorrt_rtx``: every function takes the module by
name, and the version is told by the API (``BuilderFlag.FP16`` gone means strongly typed only), never by
parsing a version string.  Like ``runner.py`` it imports only the standard library, numpy, TensorRT and
(for device buffers) cuda-python or torch; it is appended to ``runner.py`` when shipped.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

# --- bundle: drop from here (runner.py defines these names in the shipped bundle) ---
from graphprune.targets.runner import (
    JobError,
    cuda_device_count,
    import_module,
    make_inputs,
    peak_rss_bytes,
    reset_peak_rss,
    resolve_shape,
    rss_bytes,
    timed_loop,
    versions,
)

# --- bundle: drop to here ---


def trt_logger(trt: Any, quiet: bool = False) -> Any:
    """A trt.ILogger that keeps warnings and errors (for one-line error messages and the build report)."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: list[tuple[str, str]] = []

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                level = "error" if int(severity) <= int(trt.ILogger.Severity.ERROR) else "warning"
                self.lines.append((level, msg))
                if not quiet:
                    sys.stderr.write(f"[{trt.__name__}] {level}: {msg}\n")

        def errors(self) -> list[str]:
            return [m for lvl, m in self.lines if lvl == "error"]

    return _Logger()


def _parser_errors(parser: Any) -> list[dict[str, Any]]:
    out = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        desc = str(e.desc())
        if len(desc) < 12:  # e.g. "false": the checker function's name says more
            desc = f"{e.func()} rejected it ({desc})" if hasattr(e, "func") else desc
        out.append({"node_index": int(e.node()), "node_name": e.node_name() if hasattr(e, "node_name") else "",
                    "op_type": e.node_operator() if hasattr(e, "node_operator") else "",
                    "code": str(e.code()).split(".")[-1], "description": desc})
    return out


def _write_atomic(path: str, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".graphprune-", dir=os.path.dirname(os.path.abspath(path)))
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _trt_profile_shapes(trt: Any, builder: Any, network: Any, config: Any, t: dict[str, Any],
                        notes: list[str]) -> list[dict[str, Any]]:
    """One optimisation profile covering every dynamic input (min/opt/max from --*-shapes)."""
    mins, opts, maxs = t.get("min_shapes") or {}, t.get("opt_shapes") or {}, t.get("max_shapes") or {}
    rows: list[dict[str, Any]] = []
    profile = None
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = [int(d) for d in tensor.shape]
        if all(d >= 0 for d in dims) and not (tensor.name in opts or tensor.name in mins):
            continue
        if tensor.is_shape_tensor:
            raise JobError("usage", f"input '{tensor.name}' is a shape tensor; graphprune does not set shape-"
                                    "tensor profiles: fold it into a constant before building")
        named = [d if d >= 0 else (tensor.get_dimension_name(k) if hasattr(tensor, "get_dimension_name") else None)
                 or -1 for k, d in enumerate(dims)]
        opt = resolve_shape(tensor.name, named, opts, notes)
        lo = resolve_shape(tensor.name, named, mins, []) if tensor.name in mins else opt
        hi = resolve_shape(tensor.name, named, maxs, []) if tensor.name in maxs else opt
        profile = profile or builder.create_optimization_profile()
        profile.set_shape(tensor.name, lo, opt, hi)
        rows.append({"name": tensor.name, "min": lo, "opt": opt, "max": hi})
    if profile is not None:
        config.add_optimization_profile(profile)
    return rows


def trt_build(job: dict[str, Any]) -> dict[str, Any]:
    """Parse and build with ``tensorrt`` (10.x weakly or strongly typed, 11.x strongly typed) or
    ``tensorrt_rtx`` (strongly typed, builds ahead of time without a GPU)."""
    t, b = job["trt"], job["build"]
    trt = import_module(t["module"], t.get("install_hint", ""))
    log = trt_logger(trt)
    weak_flags = hasattr(trt.BuilderFlag, "FP16")  # TensorRT 11 and TensorRT-RTX removed precision flags
    strongly = not weak_flags or bool(t.get("strongly_typed"))
    precision = t.get("precision", "fp32")
    if strongly and precision != "fp32" and not t.get("graph_precision"):
        raise JobError("usage", f"{trt.__name__} {trt.__version__} builds strongly typed networks: {precision} "
                                "must live in the ONNX graph (graphprune converts fp16 for you; quantize int8 "
                                "with Q/DQ nodes, convert bf16 before building)")
    builder = trt.Builder(log)
    flags = 0
    if strongly and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    t0 = time.perf_counter()
    if not parser.parse_from_file(b["model"]):
        errs = _parser_errors(parser) or [{"node_index": -1, "node_name": "", "op_type": "", "code": "?",
                                           "description": "; ".join(log.errors()) or "unknown parser error"}]
        where = "; ".join(
            (f"node #{e['node_index']} '{e['node_name']}' ({e['op_type']})" if e["node_index"] >= 0 else "graph")
            + f": {e['code']}: {e['description']}" for e in errs[:5])
        raise JobError("target", f"{trt.__name__} {trt.__version__} ONNX parser rejected the model: {where}")
    parse_s = time.perf_counter() - t0
    config = builder.create_builder_config()
    notes: list[str] = []
    if t.get("workspace_bytes"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(t["workspace_bytes"]))
    if not strongly and precision != "fp32":
        config.set_flag(getattr(trt.BuilderFlag, precision.upper()))
        if precision == "int8":
            notes.append("int8 without a calibrator: the model needs Q/DQ nodes or dynamic ranges")
    if t.get("dla_core") is not None:
        if builder.num_DLA_cores == 0:
            raise JobError("unavailable", "this device has no DLA core (DLA is on Jetson Xavier/Orin); drop --dla-core")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(t["dla_core"])
        if t.get("gpu_fallback", True):
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if t.get("compute_capabilities"):
        if not hasattr(config, "set_compute_capability"):
            raise JobError("usage", f"{trt.__name__} has no compute-capability API (only TensorRT-RTX builds "
                                    "ahead of time for other GPUs)")
        ccs = [getattr(trt.ComputeCapability, c) for c in t["compute_capabilities"]]
        config.num_compute_capabilities = len(ccs)
        for i, cc in enumerate(ccs):
            config.set_compute_capability(cc, i)
    profiles = _trt_profile_shapes(trt, builder, network, config, t, notes)
    cache_path, cache_in = t.get("timing_cache"), 0
    if cache_path:  # on a device the host seeds the cache from its own copy and fetches it back
        data, src = b"", t.get("timing_cache_seed") or cache_path
        if os.path.exists(src):
            with open(src, "rb") as f:
                data = f.read()
        cache_in = len(data)
        config.set_timing_cache(config.create_timing_cache(data), False)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - t0
    if plan is None:
        raise JobError("target", f"{trt.__name__} {trt.__version__} failed to build the engine: "
                                 + ("; ".join(log.errors()[-3:]) or "no error logged"))
    _write_atomic(b["engine"], plan)
    cache_out = None
    if cache_path:
        ser = config.get_timing_cache().serialize()
        _write_atomic(cache_path, ser)
        cache_out = len(bytes(ser))
    io = [{"name": x.name, "shape": [int(d) for d in x.shape], "dtype": str(x.dtype).split(".")[-1],
           "kind": kind} for kind, get, n in (("input", network.get_input, network.num_inputs),
                                              ("output", network.get_output, network.num_outputs))
          for x in (get(i) for i in range(n))]
    ccs_used = [str(config.get_compute_capability(i)).split(".")[-1]
                for i in range(getattr(config, "num_compute_capabilities", 0))]
    report = {
        "library": {"module": trt.__name__, "version": trt.__version__},
        "strongly_typed": strongly, "precision": precision, "graph_precision": bool(t.get("graph_precision")),
        "flags": sorted(n for n, f in trt.BuilderFlag.__members__.items() if config.get_flag(f)),
        "workspace_bytes": t.get("workspace_bytes"), "dla_core": t.get("dla_core"),
        "gpu_fallback": t.get("gpu_fallback", True) if t.get("dla_core") is not None else None,
        "compute_capabilities": ccs_used or None, "profiles": profiles, "io": io,
        "num_layers": network.num_layers, "parse_s": round(parse_s, 6), "build_s": round(build_s, 6),
        "timing_cache": {"path": cache_path, "loaded_bytes": cache_in, "saved_bytes": cache_out} if cache_path else None,
        "notes": notes, "warnings": sorted({m for lvl, m in log.lines if lvl == "warning"})[:20],
    }
    files = {"engine": b["engine"]}
    if cache_path and t.get("timing_cache_is_output"):
        files["timing_cache"] = cache_path
    return {"files": files, "report": report, "versions": versions(trt)}


class _CudaPython:
    """Device buffers, stream and events through cuda-python (``cuda.bindings.runtime``)."""

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as rt
        except ImportError:
            from cuda import cudart as rt
        self.rt = rt
        self.stream = self._ok(rt.cudaStreamCreate())
        self.handle = int(self.stream)

    @staticmethod
    def _ok(res: Any) -> Any:
        err, rest = res[0], res[1:]
        if int(err) != 0:
            raise JobError("target", f"CUDA call failed: {err}")
        return rest[0] if len(rest) == 1 else None

    def alloc(self, nbytes: int) -> int:
        return int(self._ok(self.rt.cudaMalloc(max(nbytes, 1))))

    def h2d(self, dst: int, arr: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._ok(self.rt.cudaMemcpyAsync(dst, arr.ctypes.data, arr.nbytes, kind, self.stream))

    def d2h(self, arr: Any, src: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ok(self.rt.cudaMemcpyAsync(arr.ctypes.data, src, arr.nbytes, kind, self.stream))

    def event(self) -> Any:
        return self._ok(self.rt.cudaEventCreate())

    def record(self, ev: Any) -> None:
        self._ok(self.rt.cudaEventRecord(ev, self.stream))

    def sync(self) -> None:
        self._ok(self.rt.cudaStreamSynchronize(self.stream))

    def elapsed_ms(self, a: Any, b: Any) -> float:
        return float(self._ok(self.rt.cudaEventElapsedTime(a, b)))


class _CudaTorch(_CudaPython):
    """The same through PyTorch (common on Jetson images); buffers are uint8 tensors kept by address."""

    def __init__(self) -> None:
        import torch

        if not torch.cuda.is_available():
            raise JobError("unavailable", "torch sees no CUDA GPU")
        self.torch, self.s, self.bufs = torch, torch.cuda.Stream(), {}  # type: ignore[var-annotated]
        self.handle = int(self.s.cuda_stream)

    def alloc(self, nbytes: int) -> int:
        buf = self.torch.empty(max(nbytes, 1), dtype=self.torch.uint8, device="cuda")
        self.bufs[buf.data_ptr()] = buf
        return int(buf.data_ptr())

    def _host(self, arr: Any) -> Any:
        return self.torch.from_numpy(arr.reshape(-1).view("uint8"))

    def h2d(self, dst: int, arr: Any) -> None:
        with self.torch.cuda.stream(self.s):
            self.bufs[dst][: arr.nbytes].copy_(self._host(arr), non_blocking=True)

    def d2h(self, arr: Any, src: int) -> None:
        with self.torch.cuda.stream(self.s):
            self._host(arr).copy_(self.bufs[src][: arr.nbytes], non_blocking=False)

    def event(self) -> Any:
        return self.torch.cuda.Event(enable_timing=True)

    def record(self, ev: Any) -> None:
        ev.record(self.s)

    def sync(self) -> None:
        self.s.synchronize()

    def elapsed_ms(self, a: Any, b: Any) -> float:
        return float(a.elapsed_time(b))


def cuda_api() -> _CudaPython:
    errors = []
    for cls in (_CudaPython, _CudaTorch):
        try:
            return cls()
        except (ImportError, JobError) as e:
            errors.append(f"{cls.__name__}: {e}")
    raise JobError("unavailable", "running a TensorRT engine needs cuda-python ('pip install cuda-python') "
                                  "or PyTorch with CUDA for device buffers (" + "; ".join(errors) + ")")


def _trt_engine_runner(trt: Any, cuda: _CudaPython, path: str, prof: dict[str, Any], log: Any
                       ) -> tuple[dict[str, Any], Callable[[], float]]:
    import numpy as np

    with open(path, "rb") as f:
        data = f.read()
    runtime = trt.Runtime(log)
    t0 = time.perf_counter()
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        msg = "; ".join(log.errors()[-3:]) or "no error logged"
        if any(k in msg.lower() for k in ("version", "magic", "serializ")):
            raise JobError("target", f"{os.path.basename(path)} was built by another TensorRT version or is not "
                                     f"an engine ({msg}); rebuild it on this device with 'graphprune build'")
        raise JobError("target", f"{trt.__name__} {trt.__version__} could not load the engine: {msg}")
    context = engine.create_execution_context()
    init_ms = (time.perf_counter() - t0) * 1e3
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    specs = [(n, [int(d) for d in engine.get_tensor_shape(n)], np.dtype(trt.nptype(engine.get_tensor_dtype(n))).name)
             for n in inputs]
    notes: list[str] = []
    feeds, info = make_inputs(specs, prof, notes)
    feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
    for n in inputs:
        context.set_input_shape(n, feeds[n].shape)
    dev: dict[str, int] = {}
    outs: dict[str, Any] = {}
    for n in names:
        arr = feeds[n] if n in feeds else np.empty([int(d) for d in context.get_tensor_shape(n)],
                                                     dtype=trt.nptype(engine.get_tensor_dtype(n)))
        if n not in feeds:
            outs[n] = arr
        dev[n] = cuda.alloc(arr.nbytes)
        context.set_tensor_address(n, dev[n])
    ev0, ev1 = cuda.event(), cuda.event()

    def run() -> float:  # end-to-end timed by the caller, compute (engine only) by CUDA events
        for n in inputs:
            cuda.h2d(dev[n], feeds[n])
        cuda.record(ev0)
        if not context.execute_async_v3(cuda.handle):
            raise JobError("target", "execute_async_v3 failed: " + "; ".join(log.errors()[-2:]))
        cuda.record(ev1)
        for n, arr in outs.items():
            cuda.d2h(arr, dev[n])
        cuda.sync()
        return cuda.elapsed_ms(ev0, ev1)

    mem = getattr(engine, "device_memory_size_v2", None)
    entry = {"model": path, "init_ms": init_ms, "inputs": info, "notes": notes,
             "config": {"module": trt.__name__, "device_memory_bytes": mem, "buffers": type(cuda).__name__}}
    return entry, run


def trt_profile(job: dict[str, Any]) -> dict[str, Any]:
    t, prof = job["trt"], job["profile"]
    trt = import_module(t["module"], t.get("install_hint", ""))
    expected = t.get("expected_version")
    if expected and expected != trt.__version__:
        raise JobError("target", f"the engine was built with {trt.__name__} {expected} but this device has "
                                 f"{trt.__version__}; an engine runs only on the TensorRT version that built "
                                 "it: rebuild it here with 'graphprune build'")
    n, why = cuda_device_count()
    if n == 0:
        raise JobError("unavailable", f"no CUDA GPU on this machine ({why}); a TensorRT engine runs only on an "
                                      "NVIDIA GPU: profile it on the device with --device ssh://user@host")
    cuda = cuda_api()
    entries, fns = [], []
    for path in prof["models"]:
        exact = reset_peak_rss()
        rss0, hwm0 = rss_bytes(), peak_rss_bytes()
        entry, run = _trt_engine_runner(trt, cuda, path, prof, trt_logger(trt))
        t0 = time.perf_counter()
        run()
        entry["first_inference_ms"] = (time.perf_counter() - t0) * 1e3
        entry["memory"] = {"rss_delta_bytes": rss_bytes() - rss0, "peak_exact": exact,
                           "peak_rss_delta_bytes": peak_rss_bytes() - (rss0 if exact else hwm0)}
        entries.append(entry)
        fns.append(run)
    e2e, comp, timing = timed_loop(list(fns), prof)
    for i, entry in enumerate(entries):
        entry["samples_ms"], entry["compute_samples_ms"] = e2e[i], comp[i]
        entry["memory"]["peak_rss_bytes"] = peak_rss_bytes()
        if prof.get("per_node"):
            entry["notes"].append("per-node profiles are for ONNX Runtime targets; skipped")
    return {"runs": entries, "timing": timing, "versions": versions(trt)}
