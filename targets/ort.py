"""ONNX Runtime targets: ``ort-cpu`` (x86 and ARM, XNNPACK when the build has it), ``ort-cuda``, ``ort-trt``.

``build`` saves what ORT's optimiser made of the model (``.optimized.onnx``) and, for ``ort-cpu``, the
``.ort`` flatbuffer format that minimal/mobile ORT builds (Raspberry Pi, Android) load.  Both depend on
the CPU they were optimised for at level ``all``, so build on the device that runs them (``--device``).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from graphprune.errors import UsageError
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


class OrtTarget(Target):
    """ONNX Runtime with a fixed execution-provider chain."""

    providers: ClassVar[list[str]]
    engine_suffix = ".optimized.onnx"
    save_ort_format: ClassVar[bool] = False

    def available(self, executor: Executor | None = None) -> tuple[bool, str]:
        if executor is None or executor.is_local:
            try:
                ort: Any = importlib.import_module("onnxruntime")
            except Exception as e:
                return False, f"onnxruntime cannot be imported ({type(e).__name__}: {e}); pip install onnxruntime"
            version, have = ort.__version__, list(ort.get_available_providers())
        else:
            info = executor.facts()["available"]["onnxruntime"]
            if "error" in info:
                return False, f"onnxruntime cannot be imported on the device ({info['error']})"
            version, have = info["version"], info["providers"]
        if self.providers[0] not in have:
            return False, (f"{self.providers[0]} is not in onnxruntime {version} here "
                           f"(available: {', '.join(have)})")
        extra = " + XNNPACK" if "XnnpackExecutionProvider" in have and self.name == "ort-cpu" else ""
        return True, f"onnxruntime {version}{extra}"

    def ort_config(self, options: TargetOptions) -> dict[str, Any]:
        o = options.ort
        if o.graph_opt_level not in ("disable", "basic", "extended", "all"):
            raise UsageError(f"unknown graph optimisation level {o.graph_opt_level!r}")
        return {
            "providers": list(self.providers), "provider_options": self.provider_options(options),
            "intra_op_threads": o.intra_op_threads, "inter_op_threads": o.inter_op_threads,
            "graph_opt_level": o.graph_opt_level, "spinning": o.spinning,
            "xnnpack": o.xnnpack if self.name == "ort-cpu" else "off",
        }

    def provider_options(self, options: TargetOptions) -> list[dict[str, str]]:
        return [{} for _ in self.providers]

    def artifact_paths(self, output: Path) -> dict[str, Path]:
        name = output.name
        for suffix in (".optimized.onnx", ".ort", ".onnx"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        paths = {"optimized_onnx": output.with_name(name + ".optimized.onnx")}
        if self.save_ort_format:
            paths["ort"] = output.with_name(name + ".ort")
        return paths

    def build(self, model: Path, output: Path | None, options: TargetOptions) -> Engine:
        ex = executor_of(options)
        sha = check_model(model, ex)
        output = output or self.default_output(model)
        outputs = self.artifact_paths(output)
        for dest in outputs.values():
            check_output_path(dest, model)
        [staged] = ex.stage([model])
        job = {"backend": "ort", "ort": self.ort_config(options), "build": {
            "model": staged, "optimized_onnx": "{scratch}/model.optimized.onnx",
            "ort_format": "{scratch}/model.ort" if self.save_ort_format else None}}
        result = run_build(ex, job, outputs, model, sha, self.name)
        primary = outputs.get("ort", outputs["optimized_onnx"])
        report_path = primary.with_name(primary.name + ".json")
        write_build_report(report_path, result["build_report"])
        key = "ort" if "ort" in outputs else "optimized_onnx"
        remote = remote_paths(ex, result)
        return Engine(
            target=self.name, path=primary, kind="ort" if key == "ort" else "onnx",
            sha256=result["files"][key]["sha256"], source=model,
            artifacts={**outputs, "report": report_path}, report=result["build_report"],
            remote={ex.location: remote[key]} if key in remote else {},
        )

    def load(self, path: Path, options: TargetOptions, workdir: Path | None = None) -> Engine:
        ex = executor_of(options)
        if path.suffix.lower() == ".onnx":
            return Engine(self.name, path, "onnx", sha256=check_model(path, ex), source=path)
        if path.suffix.lower() == ".ort":
            if not path.is_file():
                raise UsageError(f"{path}: no such file")
            return Engine(self.name, path, "ort", sha256=engine_sha(path))
        raise UsageError(f"{path}: {self.name} profiles .onnx models or .ort files")

    def profile(self, engines: Sequence[Engine], options: TargetOptions, timing: ProfileOptions) -> ProfileReport:
        ex = executor_of(options)
        result = profile_job(ex, "ort", engines, options, timing, {"ort": self.ort_config(options)})
        return report_from(self.name, ex, engines, result, timing)


class OrtCpu(OrtTarget):
    name = "ort-cpu"
    summary = "ONNX Runtime on the CPU (XNNPACK when present); builds .optimized.onnx and .ort"
    providers = ["CPUExecutionProvider"]
    engine_suffix = ".ort"
    save_ort_format = True


class OrtCuda(OrtTarget):
    name = "ort-cuda"
    summary = "ONNX Runtime CUDA execution provider (onnxruntime-gpu)"
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]


class OrtTensorRT(OrtTarget):
    name = "ort-trt"
    summary = "ONNX Runtime TensorRT execution provider (onnxruntime-gpu built with TensorRT)"
    providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    def provider_options(self, options: TargetOptions) -> list[dict[str, str]]:
        t = options.trt
        trt_opts = {"trt_fp16_enable": "True" if t.precision == "fp16" else "False",
                    "trt_int8_enable": "True" if t.precision == "int8" else "False"}
        if t.workspace_bytes:
            trt_opts["trt_max_workspace_size"] = str(t.workspace_bytes)
        if t.dla_core is not None:
            trt_opts.update(trt_dla_enable="True", trt_dla_core=str(t.dla_core))
        if t.timing_cache is not None:
            trt_opts.update(trt_timing_cache_enable="True", trt_timing_cache_path=str(t.timing_cache.parent))
        if options.shapes:
            spec = ",".join(f"{k}:{'x'.join(map(str, v))}" for k, v in options.shapes.items())
            lo = ",".join(f"{k}:{'x'.join(map(str, v))}" for k, v in {**options.shapes, **options.min_shapes}.items())
            hi = ",".join(f"{k}:{'x'.join(map(str, v))}" for k, v in {**options.shapes, **options.max_shapes}.items())
            trt_opts.update(trt_profile_min_shapes=lo, trt_profile_opt_shapes=spec, trt_profile_max_shapes=hi)
        return [trt_opts, {}, {}]
