#!/usr/bin/env python3
"""graphprune device runner: facts, ONNX Runtime sessions, timing loops.

Self-contained on purpose.  graphprune ships this one file to remote devices over ssh and runs it with the
device's own ``python3``, so it imports only the standard library and numpy at module level, and
onnxruntime / tensorrt lazily.  Locally it runs the same way, in a child process, so local and remote
figures come from one code path and peak memory is not inflated by graphprune's own imports.

Protocol: one JSON job on stdin; one line ``GRAPHPRUNE-RESULT <json>`` on stdout.  Errors come back as
``{"ok": false, "error": {"kind": ..., "message": ...}}``; kinds: unavailable, usage, model, target.
This file holds the shared core (facts, memory, inputs, timing loop, job dispatch); the backends are
``runner_ort.py`` and ``runner_trt.py``.  graphprune ships the three as ONE script (this file, then the
other two without their import blocks, then the ``__main__`` guard: see ``executor.runner_source``), so
the device needs no graphprune install.
Keep it importable by Python 3.8 (no match statements, no runtime ``X | Y`` types).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

RESULT_MARK = "GRAPHPRUNE-RESULT "
PROTOCOL = 1
class JobError(Exception):
    """A failure the host turns into a typed graphprune error (``kind`` picks the class)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def import_module(name: str, hint: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception as e:  # ImportError, or a broken native library (OSError)
        raise JobError("unavailable", f"cannot import {name} ({type(e).__name__}: {e}); {hint}") from e


# ----------------------------------------------------------------------------------------------- facts
def _read(path: str) -> str | None:
    try:
        with open(path, errors="replace") as f:
            return f.read().replace("\x00", "").strip()
    except OSError:
        return None


def _cmd(args: list[str], timeout: float = 5.0) -> str | None:
    exe = shutil.which(args[0]) or next(
        (p for p in (f"/usr/bin/{args[0]}", f"/usr/sbin/{args[0]}") if os.access(p, os.X_OK)), None)
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, *args[1:]], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cuda_device_count() -> tuple[int, str]:
    """GPUs the CUDA driver sees, without importing any framework."""
    import ctypes

    lib = None
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return 0, "no CUDA driver (libcuda.so.1) found"
    rc = lib.cuInit(0)
    if rc != 0:
        return 0, f"cuInit failed with CUDA error {rc}"
    n = ctypes.c_int(0)
    rc = lib.cuDeviceGetCount(ctypes.byref(n))
    return (n.value, "ok") if rc == 0 else (0, f"cuDeviceGetCount failed with CUDA error {rc}")


def device_facts() -> dict[str, Any]:
    cpuinfo = _read("/proc/cpuinfo") or ""
    cpu_model = None
    for key in ("model name", "Hardware", "Model", "cpu model", "Processor"):
        for line in cpuinfo.splitlines():
            if line.split(":")[0].strip() == key and ":" in line:
                cpu_model = line.split(":", 1)[1].strip()
                break
        if cpu_model:
            break
    mem = next((int(ln.split()[1]) * 1024 for ln in (_read("/proc/meminfo") or "").splitlines()
                if ln.startswith("MemTotal:")), None)
    facts: dict[str, Any] = {
        "hostname": platform.node(), "os": platform.platform(), "machine": platform.machine(),
        "python": platform.python_version(), "cpu_model": cpu_model or platform.processor() or None,
        "board": _read("/proc/device-tree/model"), "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_total_bytes": mem,
        "cpu_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
    }
    temp = _read("/sys/class/thermal/thermal_zone0/temp")
    facts["temperature_c"] = int(temp) / 1000.0 if temp and temp.lstrip("-").isdigit() else None
    nv = _cmd(["nvpmodel", "-q"])
    if nv is not None:  # Jetson
        facts["jetson_power_mode"] = nv.splitlines()[0] if nv else ""
        facts["jetson_release"] = _read("/etc/nv_tegra_release")
    pi_temp = _cmd(["vcgencmd", "measure_temp"])
    if pi_temp is not None:  # Raspberry Pi firmware tools
        facts["pi_temperature"] = pi_temp
        facts["pi_throttled"] = _cmd(["vcgencmd", "get_throttled"])
    smi = _cmd(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                "--format=csv,noheader"])
    if smi:
        keys = ("name", "driver", "memory", "compute_capability")
        facts["gpus"] = [dict(zip(keys, (x.strip() for x in ln.split(",")))) for ln in smi.splitlines()]  # noqa: B905
    return facts


def availability() -> dict[str, Any]:
    """What this machine can run: ORT providers, TensorRT modules, CUDA GPUs."""
    out: dict[str, Any] = {}
    try:
        ort = importlib.import_module("onnxruntime")
        out["onnxruntime"] = {"version": ort.__version__, "providers": list(ort.get_available_providers())}
    except Exception as e:
        out["onnxruntime"] = {"error": f"{type(e).__name__}: {e}"}
    for mod in ("tensorrt", "tensorrt_rtx"):
        try:
            m = importlib.import_module(mod)
            out[mod] = {"version": getattr(m, "__version__", "?"),
                        "strongly_typed_only": not hasattr(m.BuilderFlag, "FP16")}
        except Exception as e:
            out[mod] = {"error": f"{type(e).__name__}: {e}"}
    n, why = cuda_device_count()
    out["cuda_gpus"] = {"count": n, "detail": why}
    return out


def versions(*modules: Any) -> dict[str, str]:
    import numpy as np

    v = {"python": platform.python_version(), "numpy": np.__version__}
    for m in modules:
        if m is not None:
            v[m.__name__] = getattr(m, "__version__", "?")
    return v


# --------------------------------------------------------------------------------------------- memory
def _status_bytes(field: str) -> int | None:
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def rss_bytes() -> int:
    return _status_bytes("VmRSS") or 0


def peak_rss_bytes() -> int:
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


def reset_peak_rss() -> bool:
    """Linux >= 4.0 resets VmHWM to the current RSS when '5' is written to clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------- inputs
def default_dim(index: int, rank: int, label: str) -> int:
    """A sensible value for a symbolic dimension: batch 1, sequences 16 (short enough for any position
    table), images 3x224x224, anything else 1.  Every choice is reported; --shapes overrides."""
    low = label.lower()
    if index == 0:
        return 1
    if low in ("s", "t", "l") or any(k in low for k in ("seq", "len", "token", "time", "step")):
        return 16
    if rank == 4:
        return 3 if index == 1 else 224
    return 1


def resolve_shape(name: str, dims: list[Any], shapes: dict[str, list[int]], notes: list[str]) -> list[int]:
    if name in shapes:
        given = [int(d) for d in shapes[name]]
        if dims and len(given) != len(dims):
            raise JobError("usage", f"--shapes gives {len(given)} dims for input '{name}', the model has "
                                    f"{len(dims)} ({dims})")
        for i, (d, g) in enumerate(zip(dims, given)):  # noqa: B905 (3.8 on devices)
            if isinstance(d, int) and d >= 0 and d != g:
                raise JobError("usage", f"--shapes sets '{name}' dim {i} to {g}, but the model fixes it to {d}")
        return given
    out = []
    for i, d in enumerate(dims):
        if isinstance(d, int) and d >= 0:
            out.append(d)
            continue
        v = default_dim(i, len(dims), d if isinstance(d, str) else "")
        notes.append(f"input '{name}' dim {i} ({d if isinstance(d, str) else 'dynamic'}) set to {v}; "
                     "pass --shapes to choose")
        out.append(v)
    return out


def make_inputs(specs: list[tuple[str, list[Any], str]], prof: dict[str, Any],
                notes: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Random feeds from (name, dims, numpy dtype) specs, or arrays from the ``.npz`` file."""
    import numpy as np

    shapes = prof.get("shapes") or {}
    rng = np.random.default_rng(int(prof.get("seed", 0)))
    npz = None
    if prof.get("inputs_npz"):
        try:
            npz = np.load(prof["inputs_npz"], allow_pickle=False)
        except Exception as e:
            raise JobError("usage", f"cannot read --inputs file ({type(e).__name__}: {e})") from e
        missing = [n for n, _, _ in specs if n not in npz.files]
        if missing:
            raise JobError("usage", f"--inputs file lacks {missing}; the model's inputs are "
                                    f"{[n for n, _, _ in specs]} (file has {list(npz.files)})")
    feeds: dict[str, Any] = {}
    info = []
    for name, dims, dtype in specs:
        if npz is not None:
            arr = npz[name]
            if str(arr.dtype) != dtype:
                raise JobError("usage", f"--inputs '{name}' is {arr.dtype}, the model wants {dtype}")
            source = "npz"
        else:
            shape = resolve_shape(name, dims, shapes, notes)
            dt = np.dtype(dtype)
            if dt.kind == "f":
                arr = rng.standard_normal(shape).astype(dt)
            elif dt.kind == "b":
                arr = np.asarray(rng.random(shape) < 0.5)  # 0-d too: ORT wants an array, not np.bool_
            elif "mask" in name.lower():
                arr = np.ones(shape, dtype=dt)
            else:
                arr = rng.integers(0, 100, size=shape).astype(dt)
            source = "random"
        feeds[name] = arr
        info.append({"name": name, "shape": list(arr.shape), "dtype": str(arr.dtype), "source": source})
    return feeds, info


# --------------------------------------------------------------------------------------------- timing
def timed_loop(fns: list[Callable[[], float | None]], prof: dict[str, Any]
               ) -> tuple[list[list[float]], list[list[float]], dict[str, Any]]:
    """Warm up by time, then measure round-robin (A, B, A, B, ...) until count and duration are met.

    Each fn returns None, or the device-side compute time in ms (GPU targets).  Returns end-to-end and
    compute samples in ms, per fn.
    """
    clock = time.perf_counter
    warm_s = float(prof.get("warmup_s", 0.2))
    start, warm_n = clock(), 0
    while True:
        for fn in fns:
            fn()
        warm_n += 1
        if clock() - start >= warm_s:
            break
    warm_elapsed = clock() - start
    iters, dur = int(prof.get("iterations", 10)), float(prof.get("duration_s", 1.0))
    cap = int(prof.get("max_iterations", 1_000_000))
    e2e: list[list[float]] = [[] for _ in fns]
    comp: list[list[float]] = [[] for _ in fns]
    start = clock()
    while True:
        for i, fn in enumerate(fns):
            t0 = clock()
            c = fn()
            e2e[i].append((clock() - t0) * 1e3)
            if c is not None:
                comp[i].append(c)
        n = len(e2e[0])
        if n >= cap or (n >= max(iters, 1) and clock() - start >= dur * len(fns)):
            break
    timing = {"warmup_s": round(warm_elapsed, 6), "warmup_rounds": warm_n, "measure_s": round(clock() - start, 6),
              "interleaved": len(fns) > 1}
    return e2e, comp, timing


# ------------------------------------------------------------------------------------------------ jobs
def sha256_file(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _finalize_files(files: dict[str, str], publish_dir: str | None) -> dict[str, dict[str, Any]]:
    """Hash the outputs; on a device, move them into the content-addressed cache (no re-upload later)."""
    out = {}
    for key, path in files.items():
        digest, size = sha256_file(path), os.path.getsize(path)
        if publish_dir:
            dest = os.path.join(publish_dir, digest + os.path.splitext(path)[1])
            os.replace(path, dest)
            path = dest
        out[key] = {"path": path, "sha256": digest, "bytes": size}
    return out


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    op, backend = job.get("op"), job.get("backend", "ort")
    if job.get("protocol", PROTOCOL) != PROTOCOL:
        raise JobError("target", f"runner protocol {PROTOCOL} cannot run a protocol {job.get('protocol')} job")
    if op == "facts":
        return {"facts": device_facts(), "available": availability()}
    if op not in ("build", "profile"):
        raise JobError("usage", f"unknown runner op {op!r}")
    scratch = job.get("scratch")
    if scratch:
        os.makedirs(scratch, exist_ok=True)
    try:
        half = _half("runner_trt" if backend == "trt" else "runner_ort")
        prefix = "trt" if backend == "trt" else "ort"
        result: dict[str, Any] = getattr(half, f"{prefix}_{op}")(job)
        if "files" in result:
            result["files"] = _finalize_files(result["files"], job.get("publish_dir"))
    finally:
        if scratch and job.get("publish_dir"):
            shutil.rmtree(scratch, ignore_errors=True)
    result["facts"] = device_facts()
    return result


def _half(module: str) -> Any:
    """Where the backend functions live: further down this file in the shipped bundle, or the sibling
    module (``runner_ort`` / ``runner_trt``) when this file is imported from the package."""
    if "trt_build" in globals():
        return sys.modules[__name__]
    if not __package__:
        raise JobError("target", f"runner bundle lacks {module}; reinstall graphprune")
    return importlib.import_module(f".{module}", __package__)


def main() -> int:
    try:
        job = json.loads(sys.stdin.read())
        payload: dict[str, Any] = {"ok": True, "protocol": PROTOCOL, **run_job(job)}
    except JobError as e:
        payload = {"ok": False, "error": {"kind": e.kind, "message": str(e)}}
    except Exception as e:  # report, never a bare traceback on the host's stdout
        import traceback

        traceback.print_exc(file=sys.stderr)
        payload = {"ok": False, "error": {"kind": "target", "message": f"runner failed: {type(e).__name__}: {e}"}}
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.write("\n" + RESULT_MARK + json.dumps(payload) + "\n")
        sys.stdout.flush()
    return 0


# --- bundle: main ---
if __name__ == "__main__":
    sys.exit(main())
