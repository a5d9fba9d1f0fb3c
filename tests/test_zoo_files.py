"""The committed zoo files: present, small, valid ONNX, and runnable in ONNX Runtime as the registry says.

Needs no torch; only the re-export test does (skipped without it).
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models.zoo import ZOO, concrete_shape, random_inputs, zoo_path

MAX_BYTES = 1 << 20
NAMES = sorted(ZOO)
SEQ_LENS = (5, 16)


@functools.cache
def _session(name: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(zoo_path(name)), options, providers=["CPUExecutionProvider"])


def _seq_lens(name: str) -> tuple[int, ...]:
    return SEQ_LENS if "S" in ZOO[name].dynamic_dims else (SEQ_LENS[0],)


def test_registry_paths_are_distinct_and_inside_zoo() -> None:
    files = [entry.file for entry in ZOO.values()]
    assert len(set(files)) == len(files)
    assert all(not f.is_absolute() and ".." not in f.parts for f in files)
    with pytest.raises(KeyError, match="unknown zoo model"):
        zoo_path("no_such_model")


@pytest.mark.parametrize("name", NAMES)
def test_file_exists_and_is_small(name: str) -> None:
    path = zoo_path(name)
    assert path.is_file(), f"{path} missing: run `python models/export_zoo.py` (or models/paddleocr_cls.py)"
    assert path.stat().st_size < MAX_BYTES


@pytest.mark.parametrize("name", NAMES)
def test_passes_full_check(name: str) -> None:
    onnx.checker.check_model(str(zoo_path(name)), full_check=True)


@pytest.mark.parametrize("name", NAMES)
def test_graph_io_matches_registry(name: str) -> None:
    graph = onnx.load(str(zoo_path(name)), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    inputs = {i.name: i for i in graph.input if i.name not in initializers}
    assert list(inputs) == list(ZOO[name].inputs)
    assert [o.name for o in graph.output] == list(ZOO[name].outputs)
    for input_name, spec in ZOO[name].inputs.items():
        dims = inputs[input_name].type.tensor_type.shape.dim
        assert len(dims) == len(spec.shape)
        for dim, expected in zip(dims, spec.shape, strict=True):
            if isinstance(expected, str):  # dynamic: no fixed positive size in the file
                assert not dim.HasField("dim_value") or dim.dim_value <= 0
            elif dim.HasField("dim_value"):
                assert dim.dim_value == expected


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("name", NAMES)
def test_runs_in_onnxruntime(name: str, batch: int) -> None:
    entry = ZOO[name]
    for seq_len in _seq_lens(name):
        outputs = _session(name).run(None, random_inputs(name, batch=batch, seed=0, seq_len=seq_len))
        assert len(outputs) == len(entry.outputs)
        for value, shape in zip(outputs, entry.outputs.values(), strict=True):
            assert value.shape == concrete_shape(shape, batch, seq_len)
            assert np.isfinite(value).all()
            assert np.abs(value).max() > 0


@pytest.mark.parametrize("name", NAMES)
def test_batch_rows_are_independent(name: str) -> None:
    """Row 0 of a batch-4 run equals a batch-1 run on that row: the batch axis is really dynamic."""
    seq_len = _seq_lens(name)[-1]
    feeds = random_inputs(name, batch=4, seed=1, seq_len=seq_len)
    (batched, *_) = _session(name).run(None, feeds)
    (single, *_) = _session(name).run(None, {k: v[:1] for k, v in feeds.items()})
    np.testing.assert_allclose(batched[:1], single, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("folded", "variant"),
    [("resnet18", "resnet18_bn"), ("mobilenetv2", "mobilenetv2_bn"), ("resnet18", "resnet18_dynamo")],
)
def test_export_variants_agree(folded: str, variant: str) -> None:
    """Kept-BN and dynamo files hold the same network as the folded legacy export."""
    ops = {node.op_type for node in onnx.load(str(zoo_path(variant))).graph.node}
    assert ("BatchNormalization" in ops) == variant.endswith("_bn")
    feeds = random_inputs(folded, batch=4, seed=3)
    (expected,) = _session(folded).run(None, feeds)
    (got,) = _session(variant).run(None, feeds)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "bert"])
def test_reexport_reproduces_committed_file(name: str, tmp_path) -> None:
    pytest.importorskip("torch")
    from models.export_zoo import TINY, export_model

    entry = ZOO[name]
    fresh = tmp_path / entry.file
    export_model(TINY[name], fresh, entry.inputs, entry.outputs)
    feeds = random_inputs(name, batch=3, seed=2, seq_len=_seq_lens(name)[-1])
    expected = _session(name).run(None, feeds)
    got = ort.InferenceSession(str(fresh), providers=["CPUExecutionProvider"]).run(None, feeds)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
