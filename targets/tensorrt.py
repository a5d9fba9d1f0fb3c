"""TensorRT targets: ``tensorrt`` (10.x and 11.x) and ``tensorrt-rtx`` (TensorRT for RTX).

One class, parameterised by the Python module the runner imports; the runner's builder code is shared too
(``runner_trt.py``).  Strongly typed builds (TensorRT 11, TensorRT-RTX, or ``--strongly-typed`` on 10.x)
take their precision from the ONNX graph: for ``--precision fp16`` graphprune converts the model with
:mod:`graphprune.targets.fp16` before shipping it.  TensorRT-RTX builds ahead of time without a GPU;
running any engine needs one.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from graphprune.errors import TargetError, UsageError
from graphprune.model_io import load_model, save_model_atomic
from graphprune.targets.base import Engine, ProfileOptions, Target, TargetOptions
from graphprune.targets.executor import Executor
from graphprune.targets.jobs import (
    check_model,
    check_output_path,
    engine_sha,
    executor_of,
    profile_job,
    remote_paths,
    report_from,
    run_build,
    write_build_report,
)
from graphprune.targets.report import ProfileReport
from graphprune.targets.runner import cuda_device_count

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
PRECISIONS = ("fp32", "fp16", "int8", "bf16")


class TensorRTTarget(Target):
    """Build and run TensorRT engines with the module named by ``module``."""

    module: ClassVar[str] = "tensorrt"
    install_hint: ClassVar[str] = ""
    builds_without_gpu: ClassVar[bool] = False
    engine_suffix = ".engine"

    def available(self, executor: Executor | None = None) -> tuple[bool, str]:
        if executor is None or executor.is_local:
            try:
                mod: Any = importlib.import_module(self.module)
            except Exception as e:
                return False, f"cannot import {self.module} ({type(e).__name__}: {e}); {self.install_hint}"
            version = mod.__version__
            gpus, why = cuda_device_count()
        else:
            avail = executor.facts()["available"]
            info = avail.get(self.module, {})
            if "error" in info:
                return False, f"cannot import {self.module} on the device ({info['error']}); {self.install_hint}"
            version, gpus, why = info["version"], avail["cuda_gpus"]["count"], avail["cuda_gpus"]["detail"]
        if gpus:
            return True, f"{self.module} {version}, {gpus} CUDA GPU(s)"
        if self.builds_without_gpu:
            return True, f"{self.module} {version}; builds ahead of time here, no CUDA GPU to run engines ({why})"
        return False, f"{self.module} {version} is installed but there is no CUDA GPU ({why})"

    # ------------------------------------------------------------------------------------------ build
    def trt_config(self, options: TargetOptions) -> dict[str, Any]:
        t = options.trt
        if t.precision not in PRECISIONS:
            raise UsageError(f"unknown precision {t.precision!r}; choose from {', '.join(PRECISIONS)}")
        for name in list(options.min_shapes) + list(options.max_shapes):
            if name not in options.shapes and (name not in options.min_shapes or name not in options.max_shapes):
                raise UsageError(f"input '{name}': give --shapes (opt) or all of --min-shapes/--max-shapes")
        return {
            "module": self.module, "install_hint": self.install_hint, "precision": t.precision,
            "strongly_typed": t.strongly_typed, "workspace_bytes": t.workspace_bytes, "dla_core": t.dla_core,
            "gpu_fallback": t.gpu_fallback, "compute_capabilities": [c.upper() for c in t.compute_capabilities],
            "min_shapes": {**options.shapes, **options.min_shapes},
            "opt_shapes": {**options.shapes, **{k: v for k, v in options.min_shapes.items() if k not in options.shapes}},
            "max_shapes": {**options.shapes, **options.max_shapes},
        }

    def strongly_typed(self, executor: Executor, options: TargetOptions) -> bool:
        """Whether precision must live in the graph: told by the device's TensorRT API, not its version."""
        if options.trt.strongly_typed:
            return True
        info = executor.facts()["available"].get(self.module, {})
        if "error" in info:
            raise_unavailable(self.module, info["error"], self.install_hint, executor.location)
        return bool(info.get("strongly_typed_only"))

    def build(self, model: Path, output: Path | None, options: TargetOptions) -> Engine:
        ex = executor_of(options)
        sha = check_model(model, ex)
        output = output or self.default_output(model)
        check_output_path(output, model)
        cfg = self.trt_config(options)
        outputs = {"engine": output}
        ship, converted = model, None
        if options.trt.precision == "fp16" and self.strongly_typed(ex, options):
            ship = converted = self._fp16_copy(model, output)
            cfg["graph_precision"] = "fp16"
        try:
            [staged] = ex.stage([ship])
            cache = options.trt.timing_cache
            if cache is not None and not ex.is_local:  # the device writes a copy; we fetch it back
                cfg.update(timing_cache="{scratch}/timing.cache", timing_cache_is_output=True,
                           timing_cache_seed=ex.stage([cache])[0] if cache.is_file() else None)
                outputs["timing_cache"] = cache
            elif cache is not None:
                cfg["timing_cache"] = str(cache.resolve())
            job = {"backend": "trt", "trt": cfg, "build": {"model": staged, "engine": "{scratch}/model.engine"}}
            result = run_build(ex, job, outputs, model, sha, self.name)
        finally:
            if converted is not None:
                converted.unlink(missing_ok=True)
        report = result["build_report"]
        report_path = output.with_name(output.name + ".json")
        write_build_report(report_path, report)
        remote = remote_paths(ex, result)
        return Engine(self.name, output, "trt-engine", sha256=result["files"]["engine"]["sha256"], source=model,
                      artifacts={"engine": output, "report": report_path}, report=report,
                      remote={ex.location: remote["engine"]} if "engine" in remote else {})

    def _fp16_copy(self, model: Path, output: Path) -> Path:
        from graphprune.targets.fp16 import convert_float_to_float16

        converted = convert_float_to_float16(load_model(model, materialize=True).model)
        dest = output.with_name(f".{output.stem}.fp16.onnx")
        save_model_atomic(converted.model, dest)
        return dest

    # ---------------------------------------------------------------------------------------- profile
    def load(self, path: Path, options: TargetOptions, workdir: Path | None = None) -> Engine:
        if path.suffix.lower() == ".onnx":
            if workdir is None:
                raise UsageError(f"{self.name} needs an engine; build it first with 'graphprune build'")
            return self.build(path, workdir / f"{path.stem}.{self.name}.engine", options)
        if path.suffix.lower() not in ENGINE_SUFFIXES:
            raise UsageError(f"{path}: {self.name} profiles .onnx models or engines ({', '.join(ENGINE_SUFFIXES)})")
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
        report: dict[str, Any] = {}
        sidecar = path.with_name(path.name + ".json")
        if sidecar.is_file():
            try:
                report = json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                report = {}
        return Engine(self.name, path, "trt-engine", sha256=engine_sha(path), report=report)

    def profile(self, engines: Sequence[Engine], options: TargetOptions, timing: ProfileOptions) -> ProfileReport:
        ex = executor_of(options)
        cfg = {"module": self.module, "install_hint": self.install_hint}
        for e in engines:
            lib = (e.report.get("build") or {}).get("library") or {}
            if lib.get("module") and lib["module"] != self.module:
                raise TargetError(f"{e.name} was built with {lib['module']}, not {self.module}: profile it with "
                                  f"--target {'tensorrt-rtx' if lib['module'] == 'tensorrt_rtx' else 'tensorrt'}")
            if lib.get("version"):
                cfg["expected_version"] = lib["version"]
        result = profile_job(ex, "trt", engines, options, timing, {"trt": cfg})
        return report_from(self.name, ex, engines, result, timing)


def raise_unavailable(module: str, error: str, hint: str, where: str) -> None:
    from graphprune.errors import TargetUnavailableError

    prefix = "" if where == "local" else f"{where}: "
    raise TargetUnavailableError(f"{prefix}cannot import {module} ({error}); {hint}")


class TensorRT(TensorRTTarget):
    name = "tensorrt"
    summary = "NVIDIA TensorRT 10.x/11.x engines (GPU, Jetson DLA)"
    module = "tensorrt"
    install_hint = "install TensorRT (JetPack ships it; on x86 'pip install tensorrt' from NVIDIA's index)"


class TensorRTRtx(TensorRTTarget):
    name = "tensorrt-rtx"
    summary = "TensorRT for RTX: ahead-of-time engine builds without a GPU; runs on RTX GPUs"
    module = "tensorrt_rtx"
    install_hint = "pip install tensorrt-rtx-cu13"
    builds_without_gpu = True
