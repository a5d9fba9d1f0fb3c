"""Proof of equivalence: the pruned model must reproduce the *masked reference* — the original model
with the removed channels' columns zeroed in every consumer — in ONNX Runtime."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from graphprune.errors import GraphpruneError, TargetUnavailableError, VerificationError
from graphprune.rules import Space
from graphprune.tensors import ScratchWriter, has_external, is_external, read, save_external

REL_TOL = 1e-4


@dataclass
class VerifyResult:
    max_abs_diff: float
    max_abs_ref: float
    rel_diff: float
    exact: bool  # False when lossy groups were pruned and no exact reference applies
    passed: bool
    outputs: list[str]
    note: str = ""  # how the reference treats lossy cuts, or why it is approximate

    def summary(self) -> str:
        kind = "exact" if self.exact else "approximate (lossy groups pruned)"
        verdict = "PASS" if self.passed else "FAIL"
        note = f"; {self.note}" if self.note else ""
        return (f"{verdict}: max|Δ| = {self.max_abs_diff:.3g} = {self.rel_diff:.2e}·max|ref| "
                f"(tolerance {REL_TOL:g}, {kind} reference{note})")


def masked_reference(model: onnx.ModelProto, zero: dict[str, dict[int, np.ndarray]],
                     scratch: ScratchWriter | None = None) -> onnx.ModelProto:
    """Copy of ``model`` with ``zero[tensor][axis]`` indices set to 0 in those constants."""
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    todo = dict(zero)
    for t in ref.graph.initializer:
        if t.name in todo:
            arr = read(t).copy()
            for axis, idx in todo.pop(t.name).items():
                sl = [slice(None)] * arr.ndim
                sl[axis] = idx  # type: ignore[call-overload]
                arr[tuple(sl)] = 0
            if is_external(t) and scratch is not None:
                t.CopyFrom(scratch.put(t.name, arr))
            else:
                t.CopyFrom(numpy_helper.from_array(arr, t.name))
    for node in ref.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] in todo:
            for attr in node.attribute:
                if attr.name == "value":
                    arr = numpy_helper.to_array(attr.t).copy()
                    for axis, idx in todo[node.output[0]].items():
                        sl = [slice(None)] * arr.ndim
                        sl[axis] = idx  # type: ignore[call-overload]
                        arr[tuple(sl)] = 0
                    attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))
    return ref


def consumer_zeroing(keep: dict[Space, np.ndarray], sizes: dict[Space, int],
                     consumer_spaces: set[Space]) -> dict[str, dict[int, np.ndarray]]:
    """Removed indices of every consumer ("in") weight axis that the plan prunes."""
    out: dict[str, dict[int, np.ndarray]] = {}
    for s in consumer_spaces:
        if s in keep:
            removed = np.setdiff1d(np.arange(sizes[s]), keep[s])
            if len(removed):
                out.setdefault(s.tensor, {})[s.axis] = removed
    return out


def session(model: onnx.ModelProto, threads: int = 0, basic: bool = False):
    """A CPU session; ``basic`` limits graph optimizations to the basic level (fusions can drop
    intermediate tensors a caller exposes as outputs)."""
    import onnxruntime as ort

    if "CPUExecutionProvider" not in ort.get_available_providers():
        raise TargetUnavailableError("ONNX Runtime has no CPUExecutionProvider here")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if basic:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if has_external(model):  # ONNX Runtime reads external weights from files beside a model path
        with tempfile.TemporaryDirectory(prefix="graphprune-ort-") as tmp:
            path = Path(tmp) / "model.onnx"
            save_external(model, path, Path(tmp) / "model.onnx.data", "model.onnx.data")
            return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], what: str = "model") -> dict[str, np.ndarray]:
    try:
        sess = session(model)
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feeds), strict=True))
    except GraphpruneError:
        raise
    except Exception as e:  # ONNX Runtime raises its own exception types
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise VerificationError(
            f"ONNX Runtime cannot run the {what} for the equivalence proof ({msg}); "
            "pass --no-verify to skip the proof"
        ) from e


def compare(pruned: onnx.ModelProto, reference: onnx.ModelProto, feeds: list[dict[str, np.ndarray]],
            exact: bool = True) -> VerifyResult:
    max_diff = 0.0
    max_ref = 0.0
    names: list[str] = []
    for f in feeds:
        a = run(reference, f, "masked reference (the original model)")
        b = run(pruned, f, "pruned model")
        names = list(a)
        for k, ref in a.items():
            got = b[k]
            if ref.shape != got.shape:
                return VerifyResult(float("inf"), 0.0, float("inf"), exact, False, names)
            if ref.size == 0:
                continue
            r = ref.astype(np.float64)
            max_diff = max(max_diff, float(np.max(np.abs(r - got.astype(np.float64)))))
            max_ref = max(max_ref, float(np.max(np.abs(r))))
    rel = max_diff / max_ref if max_ref > 0 else max_diff
    passed = (max_diff <= REL_TOL * max_ref + 1e-12) if exact else True
    return VerifyResult(max_diff, max_ref, rel, exact, passed, names)
