"""CLI behaviour: exit codes, one-line errors, untouched inputs, no partial outputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from models.zoo import ZOO

GP = [sys.executable, "-m", "graphprune"]
MODEL = ZOO["resnet18"].path


def run(*args, cwd=None):
    p = subprocess.run([*GP, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)
    return p.returncode, p.stdout, p.stderr


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def model_copy(tmp_path):
    dst = tmp_path / "m.onnx"
    shutil.copy(MODEL, dst)
    return dst


def test_analyze_json(model_copy):
    rc, out, _ = run("analyze", model_copy, "--json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["group_counts"]["prunable"] == 9 and doc["macs"] > 0


def test_analyze_table(model_copy):
    rc, out, _ = run("analyze", model_copy)
    assert rc == 0 and "prunable" in out and "MACs" in out


def _if_model(path):
    then_g = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [1, 4])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, [1, 4])])
    w = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["inp", "w"], ["x"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("inp", onnx.TensorProto.FLOAT, [1, 4]),
                                       helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_analyze_if_model_lists_frozen_reason(tmp_path):
    p = tmp_path / "if.onnx"
    _if_model(p)
    rc, out, _ = run("analyze", p, "--json")
    assert rc == 0
    reasons = [r for g in json.loads(out)["groups"] for r in g["frozen_reasons"]]
    assert any("control flow 'If'" in r for r in reasons)


@pytest.mark.parametrize("case", ["missing", "truncated", "not_onnx", "empty", "directory"])
def test_bad_model_files(tmp_path, case):
    p = tmp_path / "bad.onnx"
    if case == "truncated":
        p.write_bytes(MODEL.read_bytes()[:5000])
    elif case == "not_onnx":
        p.write_text("hello, this is not a model\n" * 10)
    elif case == "empty":
        p.write_bytes(b"")
    elif case == "directory":
        p.mkdir()
    for cmd in (["analyze", p], ["shrink", p, "--ratio", "0.5"]):
        rc, _, err = run(*cmd)
        assert rc == 1, (cmd, err)
        one_line_error(err)
    assert not list(tmp_path.glob("*.pruned.onnx"))


@pytest.mark.parametrize("ratio", ["1", "-0.1", "nan", "2"])
def test_bad_ratio(model_copy, ratio):
    before = model_copy.read_bytes()
    rc, _, err = run("shrink", model_copy, "--ratio", ratio)
    assert rc == 2
    assert "ratio" in one_line_error(err)
    assert model_copy.read_bytes() == before
    assert not list(model_copy.parent.glob("*.pruned.onnx"))


def test_ratio_not_a_number(model_copy):
    rc, _, err = run("shrink", model_copy, "--ratio", "abc")
    assert rc == 2
    one_line_error(err)


def test_output_equal_to_input(model_copy):
    before = model_copy.read_bytes()
    rc, _, err = run("shrink", model_copy, "--ratio", "0.5", "-o", model_copy)
    assert rc == 2 and "input file" in one_line_error(err)
    assert model_copy.read_bytes() == before


def test_output_in_missing_dir(model_copy, tmp_path):
    rc, _, err = run("shrink", model_copy, "--ratio", "0.5", "-o", tmp_path / "nope" / "x.onnx")
    assert rc == 2 and "does not exist" in one_line_error(err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_output_in_read_only_dir(model_copy, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    rc, _, err = run("shrink", model_copy, "--ratio", "0.5", "-o", ro / "x.onnx")
    assert rc == 2 and "not writable" in one_line_error(err)


def test_unreachable_target_macs_says_best(model_copy):
    rc, _, err = run("shrink", model_copy, "--target-macs", "0.001")
    assert rc in (1, 2)
    msg = one_line_error(err)
    assert "unreachable" in msg and "of dense" in msg  # names the best reachable fraction


def test_shrink_default_output_report_and_json(model_copy, tmp_path):
    report = tmp_path / "r.json"
    rc, out, err = run("shrink", model_copy, "--ratio", "0.5", "--report", report)
    assert rc == 0, err
    assert (tmp_path / "m.pruned.onnx").exists()
    assert "verify PASS" in out
    doc = json.loads(report.read_text())
    assert doc["verify"]["passed"] and doc["macs"]["after"] < doc["macs"]["before"]
    rc, out, _ = run("shrink", model_copy, "--ratio", "0.3", "--json", "-o", tmp_path / "j.onnx")
    assert rc == 0 and json.loads(out)["params"]["ratio"] < 1


def test_ignore_pattern_matching_nothing_warns(model_copy, tmp_path):
    rc, out, _ = run("shrink", model_copy, "--ratio", "0.5", "--ignore", "no_such_layer*", "-o", tmp_path / "o.onnx")
    assert rc == 0 and "no_such_layer" in out


def test_apply_plan_reproduces_bit_for_bit(model_copy, tmp_path):
    plan = tmp_path / "plan.json"
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert run("shrink", model_copy, "--ratio", "0.5", "--criterion", "fpgm", "--global", "-o", a, "--plan", plan)[0] == 0
    rc, _, err = run("apply-plan", model_copy, plan, "-o", b)
    assert rc == 0, err
    assert a.read_bytes() == b.read_bytes()


def test_apply_plan_refuses_other_model(model_copy, tmp_path):
    plan = tmp_path / "plan.json"
    assert run("shrink", model_copy, "--ratio", "0.5", "-o", tmp_path / "a.onnx", "--plan", plan)[0] == 0
    other = tmp_path / "other.onnx"
    shutil.copy(ZOO["resnet18_bn"].path, other)
    rc, _, err = run("apply-plan", other, plan, "-o", tmp_path / "b.onnx")
    assert rc == 2 and "not the model" in one_line_error(err)
    rc, _, err = run("apply-plan", other, plan, "-o", tmp_path / "b.onnx", "--force")
    assert rc == 2 and "does not fit" in one_line_error(err)


def test_debug_prints_traceback(tmp_path):
    rc, _, err = run("--debug", "analyze", tmp_path / "missing.onnx")
    assert rc == 1 and "Traceback" in err
