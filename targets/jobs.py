"""Host-side steps every target shares: checking inputs, staging files, running build jobs, fetching
outputs into place, writing the build report."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from graphprune import __version__
from graphprune.errors import ModelLoadError, UsageError
from graphprune.model_io import file_sha256, load_model
from graphprune.targets.base import Engine, ProfileOptions, TargetOptions
from graphprune.targets.executor import Executor, LocalExecutor
from graphprune.targets.report import BUILD_SCHEMA, ProfileReport, write_json


def executor_of(options: TargetOptions) -> Executor:
    return options.executor if options.executor is not None else LocalExecutor()


def check_model(path: Path, executor: Executor) -> str:
    """Validate an ONNX file before any runtime sees it (external data safety, structure); its sha256."""
    if path.suffix.lower() != ".onnx":
        raise UsageError(f"{path}: expected an .onnx model")
    loaded = load_model(path, infer_shapes=False, load_external=False)
    external = any(t.data_location == 1 for t in loaded.model.graph.initializer)
    if external and not executor.is_local:
        raise UsageError(f"{path} keeps weights in external data files; remote devices get single files: "
                         "re-save the model without external data (it must be under 2 GB)")
    if loaded.sha256 is None:  # pragma: no cover - a path was given
        raise ModelLoadError(f"{path}: cannot hash the file")
    return loaded.sha256


def check_output_path(dest: Path, source: Path) -> None:
    from graphprune.fileio import check_output_dir

    if dest.resolve() == source.resolve():
        raise UsageError(f"output path {dest} is the input file; choose another path with -o")
    check_output_dir(dest)


def stage_engines(executor: Executor, engines: Sequence[Engine]) -> list[str]:
    """Paths of the engines on the executor: ones built there stay there, others are copied (by hash)."""
    out: list[str | None] = [e.remote.get(executor.location) for e in engines]
    todo = [i for i, p in enumerate(out) if p is None]
    for i, p in zip(todo, executor.stage([_local_path(engines[i]) for i in todo]), strict=True):
        out[i] = p
    return [p for p in out if p is not None]


def _local_path(engine: Engine) -> Path:
    if engine.path is None:
        raise UsageError(f"engine {engine.name} has no local file to send")
    return engine.path


def run_build(executor: Executor, job: dict[str, Any], outputs: dict[str, Path], model: Path,
              model_sha: str, target: str) -> dict[str, Any]:
    """Run a build job whose runner writes into a scratch folder; move each output to its destination."""
    scratch = executor.scratch()
    job = {**job, "op": "build", "scratch": scratch}
    try:
        result = executor.run(_with_scratch(job, scratch))
        for key, dest in outputs.items():
            if key in result["files"]:
                executor.fetch(result["files"][key]["path"], dest)
    finally:
        if executor.is_local:
            shutil.rmtree(scratch, ignore_errors=True)
    report = {
        "schema": BUILD_SCHEMA, "target": target, "model": {"path": str(model), "sha256": model_sha},
        "device": {"location": executor.location, "facts": result.get("facts", {})},
        "versions": {**result.get("versions", {}), "graphprune": __version__},
        "outputs": {k: {**v, "path": str(outputs[k]) if k in outputs else v["path"]}
                    for k, v in result["files"].items()},
        "build": result.get("report") or {"config": result.get("config"), "build_s": result.get("build_s")},
    }
    result["build_report"] = report
    return result


def _with_scratch(job: dict[str, Any], scratch: str) -> dict[str, Any]:
    """Replace ``{scratch}`` in the job's string values (paths of outputs)."""

    def sub(v: Any) -> Any:
        if isinstance(v, str):
            return v.replace("{scratch}", scratch)
        if isinstance(v, dict):
            return {k: sub(x) for k, x in v.items()}
        if isinstance(v, list):
            return [sub(x) for x in v]
        return v

    return {k: sub(v) for k, v in job.items()}


def remote_paths(executor: Executor, result: dict[str, Any]) -> dict[str, str]:
    """Where a device keeps each output (cache hits for a later profile there)."""
    if executor.is_local:
        return {}
    return {k: v["path"] for k, v in result["files"].items()}


def write_build_report(dest: Path, report: dict[str, Any]) -> None:
    write_json(dest, report)


def profile_job(executor: Executor, backend: str, engines: Sequence[Engine], options: TargetOptions,
                timing: ProfileOptions, extra: dict[str, Any]) -> dict[str, Any]:
    if timing.iterations < 1 and timing.duration_s <= 0:
        raise UsageError("give --iterations >= 1 or --duration > 0")
    paths = stage_engines(executor, engines)
    npz = None
    if timing.inputs_npz is not None:
        if not timing.inputs_npz.is_file():
            raise UsageError(f"--inputs {timing.inputs_npz}: no such file")
        npz = executor.stage([timing.inputs_npz])[0]
    prof = {
        "models": paths, "shapes": options.shapes, "inputs_npz": npz, "seed": timing.seed,
        "warmup_s": timing.warmup_s, "iterations": timing.iterations, "duration_s": timing.duration_s,
        "max_iterations": timing.max_iterations, "per_node": timing.per_node,
        "per_node_iterations": timing.per_node_iterations,
    }
    return executor.run({"op": "profile", "backend": backend, "profile": prof, **extra})


def report_from(target: str, executor: Executor, engines: Sequence[Engine], result: dict[str, Any],
                timing: ProfileOptions) -> ProfileReport:
    transfers = None if executor.is_local else {k: list(v) for k, v in executor.transfers.items()}
    return ProfileReport.from_result(target, executor.location, engines, result, timing, transfers)


def engine_sha(path: Path) -> str:
    return file_sha256(path)
