"""Property fuzzing on random valid graphs (``tests/fuzz_graphs.py``): analysis never crashes, every
shrink passes the equivalence proof, and ``apply-plan`` reproduces the shrink bit for bit.

Example counts come from a hypothesis profile picked by ``GRAPHPRUNE_FUZZ``: unset, 25 examples per
property with derandomized (reproducible) generation, for CI; ``GRAPHPRUNE_FUZZ=long``, 400 random
examples per property, for a local hunt.  ``GRAPHPRUNE_FUZZ_EXAMPLES=N`` overrides the count.
The long run's first find is kept below as a deterministic regression test
(:func:`test_one_channel_map_into_gemm`); until it is fixed the long convnet property fails on it.
The properties call the Python API, which the CLI mirrors (``tests/test_bad_inputs.py`` covers the CLI).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

import graphprune
from tests.fuzz_graphs import Net, conv_nets, graphs, sequence_nets

_LONG = os.environ.get("GRAPHPRUNE_FUZZ", "") == "long"
_EXAMPLES = int(os.environ.get("GRAPHPRUNE_FUZZ_EXAMPLES", 400 if _LONG else 25))
settings.register_profile("graphprune-ci", max_examples=_EXAMPLES, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("graphprune-long", max_examples=_EXAMPLES, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ = settings.get_profile("graphprune-long" if _LONG else "graphprune-ci")

OPTIONS = st.fixed_dictionaries({
    "ratio": st.sampled_from([0.2, 0.5, 0.75]),
    "criterion": st.sampled_from(["l1", "l2", "fpgm", "random"]),
    "global_ranking": st.booleans(),
    "round_to": st.sampled_from([1, 2]),
    "seed": st.integers(0, 3),
    "split": st.sampled_from(["heads", "head-dim"]),
    "allow_lossy": st.booleans(),  # residual streams through LayerNorm: proven against the exact lossy reference
    "sensitivity": st.sampled_from([False, False, True]),
})


def _save(model: onnx.ModelProto, d: Path) -> Path:
    p = d / "model.onnx"
    p.write_bytes(model.SerializeToString())
    return p


def _runs(model: onnx.ModelProto) -> None:
    """Sanity check of the generator: ONNX Runtime runs the graph at batch 2."""
    shape = [2 if isinstance(d, str) or d.dim_param else d.dim_value
             for d in model.graph.input[0].type.tensor_type.shape.dim]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": np.ones(shape, np.float32)})
    assert np.isfinite(y).all()


@FUZZ
@given(graphs())
def test_analysis_never_crashes(case: tuple[onnx.ModelProto, list[str]]) -> None:
    model, log = case
    note(" -> ".join(log))
    _runs(model)
    a = graphprune.analyze(model)
    b = graphprune.analyze(model)
    assert [g.n_units for g in a.groups] == [g.n_units for g in b.groups]  # deterministic
    for g in a.groups:
        assert g.n_units >= 1, g.describe()
        assert g.frozen == bool(g.frozen_reasons), g.describe()  # every frozen group says why
        assert g.prunable == (g.status == "prunable"), g.describe()
    assert a.cost.macs > 0


def _shrink(model: onnx.ModelProto, d: Path, options: dict[str, object]) -> tuple[Path, Path, object]:
    src = _save(model, d)
    out, plan = d / "pruned.onnx", d / "plan.json"
    result = graphprune.shrink(src, output=out, plan_path=plan, **options)  # proves, or raises
    return out, plan, result


@FUZZ
@given(conv_nets(), OPTIONS)
def test_convnet_shrink_passes_the_proof(case: tuple[onnx.ModelProto, list[str]], options: dict[str, object]) -> None:
    model, log = case
    note(" -> ".join(log))
    with tempfile.TemporaryDirectory() as tmp:
        _, _, result = _shrink(model, Path(tmp), options)
    assert result.verify is not None and result.verify.passed, result.verify  # type: ignore[attr-defined]
    assert result.params_after <= result.params_before  # type: ignore[attr-defined]
    event(f"groups pruned: {min(result.groups_pruned, 3)}")  # type: ignore[attr-defined]


@FUZZ
@given(sequence_nets(), OPTIONS)
def test_sequence_shrink_passes_the_proof(case: tuple[onnx.ModelProto, list[str]], options: dict[str, object]) -> None:
    model, log = case
    note(" -> ".join(log))
    with tempfile.TemporaryDirectory() as tmp:
        _, _, result = _shrink(model, Path(tmp), options)
    assert result.verify is not None and result.verify.passed, result.verify  # type: ignore[attr-defined]
    event(f"groups pruned: {min(result.groups_pruned, 3)}")  # type: ignore[attr-defined]
    lossy = any(result.analysis.groups[d.group_id].lossy and d.removed  # type: ignore[attr-defined]
                for d in result.allocation.decisions.values())  # type: ignore[attr-defined]
    event(f"lossy cut, proof {'exact' if result.verify.exact else 'approximate'}" if lossy  # type: ignore[attr-defined]
          else "no lossy cut")


@FUZZ
@given(graphs(), OPTIONS)
def test_apply_plan_reproduces_shrink(case: tuple[onnx.ModelProto, list[str]], options: dict[str, object]) -> None:
    model, log = case
    note(" -> ".join(log))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        out, plan, _ = _shrink(model, d, {**options, "verify": False})
        again = d / "again.onnx"
        graphprune.apply_plan(d / "model.onnx", plan, output=again, verify=False)
        assert again.read_bytes() == out.read_bytes()


# ---------------------------------------------------------------------- found by the long profile
BUG_ONE_CHANNEL_FLATTEN = (
    "rules/reshape.py: when the channel axis has size 1, Flatten (and Reshape [0, C*H*W]) couples the "
    "flattened axis to the *spatial* axis 2 instead; H becomes a 'prunable' group, the Gemm weight is sliced "
    "but the activation is not (PassError for Flatten; ORT reshape failure, an internal error, for Reshape)"
)


@pytest.mark.parametrize("head", ["flatten", "reshape"])
def test_one_channel_map_into_gemm(head: str) -> None:
    """Minimal form of the long run's counterexample: Conv(3->1) -> Flatten/Reshape -> Gemm."""
    net = Net(np.random.default_rng(0))
    y = net.conv("x", 3, 1, k=3)
    if head == "flatten":
        y = net.op1("Flatten", y, axis=1)
    else:
        y = net.op1("Reshape", y, net.const(np.array([0, 16], np.int64), "shape"))
    y = net.op1("Gemm", y, net.weight((5, 16), 16), transB=1)
    model = net.model([onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 4, 4])], y, ["N", 5])
    a = graphprune.analyze(model)
    spatial = [g for g in a.groups if g.prunable and any(s.axis >= 2 and s.tensor.startswith("conv") for s in g.spaces)]
    assert not spatial, [g.describe() for g in spatial]
    graphprune.shrink(model, ratio=0.5, write=False)  # proves, or raises
