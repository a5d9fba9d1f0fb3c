"""Every CLI command on every bad input: one typed ``Error:`` line, exit 1 (model) or 2 (usage), inputs
byte-identical afterwards, no partial outputs.  The corpus is generated per test (``tests/corpus``).

Commands run in-process (``graphprune.cli.main``) so that guards can watch every open; a few run as real
processes where only a process proves the point (a FIFO that would hang, the real exit status).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphprune import model_io
from tests.corpus.harness import (
    PROFILE_FAST,
    assert_untouched,
    check_outcome,
    command_args,
    disk_full_in_process,
    gp,
    gp_subprocess,
    guard_opens,
    read_only_dir,
    snapshot,
    tmpfs,
)
from tests.corpus.make_corpus import (
    CASES,
    COMMANDS,
    build_case,
)
from tests.corpus.models import Builder, base_model, save

FAILING = sorted(n for n, c in CASES.items() if any(c.codes.values()))
ESCAPES = sorted(n for n, c in CASES.items() if c.escapes)


@pytest.fixture(scope="session")
def foreign_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid plan made from another model (every corpus model must refuse it or fail to load)."""
    d = tmp_path_factory.mktemp("foreign")
    m = save(base_model(seed=99), d)
    run = gp("shrink", m, "--ratio", "0.5", "-o", d / "pruned.onnx", "--plan", d / "plan.json")
    assert run.rc == 0, run.err
    return d / "plan.json"


def _xfail_known(request: pytest.FixtureRequest, case: str, cmd: str) -> None:
    reason = CASES[case].xfail.get(cmd)
    if reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


# ----------------------------------------------------------------------------------- the matrix
@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("case", [n for n in CASES if n != "escape_fifo"])
def test_corpus(case: str, cmd: str, tmp_path: Path, foreign_plan: Path, request: pytest.FixtureRequest) -> None:
    _xfail_known(request, case, cmd)
    c = CASES[case]
    model = build_case(case, tmp_path)
    before, plan_bytes = snapshot(tmp_path), foreign_plan.read_bytes()
    run = gp(*command_args(cmd, model, foreign_plan))
    check_outcome(run, c.codes[cmd], c.message if c.codes[cmd] == 1 else "")
    if c.codes[cmd] == 2 and cmd == "apply-plan":
        assert "not the model this plan was made for" in run.err
    assert_untouched(before, snapshot(tmp_path), allow_new=c.codes[cmd] == 0)
    assert foreign_plan.read_bytes() == plan_bytes


@pytest.mark.parametrize("case", FAILING)
def test_debug_prints_traceback_then_the_same_error(case: str, tmp_path: Path, foreign_plan: Path) -> None:
    c = CASES[case]
    cmd = next(k for k in COMMANDS if c.codes[k] and k not in c.xfail)
    model = build_case(case, tmp_path)
    plain = gp(*command_args(cmd, model, foreign_plan))
    debug = gp("--debug", *command_args(cmd, model, foreign_plan))
    assert debug.rc == plain.rc == c.codes[cmd]
    assert "Traceback (most recent call last)" in debug.err
    assert debug.err.strip().splitlines()[-1] == plain.error_line()


# ---------------------------------------------------------------------------- escaping external data
@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("case", ESCAPES)
def test_escaping_external_data_is_refused_before_any_open(case: str, cmd: str, tmp_path: Path,
                                                           foreign_plan: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Python's open/os.open, ONNX's C++ external-data opener and process creation are all watched; the
    data outside the model folder is valid, so only the location check can stop the read."""
    model = build_case(case, tmp_path)
    outside = tmp_path / "outside"
    before = snapshot(tmp_path)
    with guard_opens(monkeypatch, outside) as guard:
        run = gp(*command_args(cmd, model, foreign_plan))
    assert guard.attempts == []
    check_outcome(run, 1, CASES[case].message)
    assert "UnsafeModelError" not in run.err  # the message, not the class name
    assert_untouched(before, snapshot(tmp_path), allow_new=False)


def test_escape_to_a_fifo_never_blocks(tmp_path: Path, foreign_plan: Path) -> None:
    """Real processes: reading '../outside/weights.bin' (a FIFO nobody writes) would block forever."""
    model = build_case("escape_fifo", tmp_path)
    before = snapshot(tmp_path)
    for cmd in COMMANDS:
        run = gp_subprocess(*command_args(cmd, model, foreign_plan), timeout=60)
        check_outcome(run, 1, CASES["escape_fifo"].message)
    assert_untouched(before, snapshot(tmp_path), allow_new=False)


def test_valid_external_data_and_internal_symlink_load(tmp_path: Path) -> None:
    """The checks refuse only what escapes: a symlink that stays inside the folder is fine."""
    model = build_case("external_ok", tmp_path)
    os.replace(tmp_path / "data" / "weights.bin", tmp_path / "data" / "real.bin")
    (tmp_path / "data" / "weights.bin").symlink_to("real.bin")
    check_outcome(gp("analyze", model), 0)
    check_outcome(gp("shrink", model, "--ratio", "0.5", "-o", tmp_path / "out.onnx"), 0)


# ----------------------------------------------------------------------------------- real processes
@pytest.mark.parametrize("case,cmd", [("truncated", "analyze"), ("cycle", "shrink"), ("escape_dotdot", "build"),
                                      ("future_opset", "profile"), ("if", "apply-plan")])
def test_real_process_exit_codes(case: str, cmd: str, tmp_path: Path, foreign_plan: Path) -> None:
    c = CASES[case]
    model = build_case(case, tmp_path)
    run = gp_subprocess(*command_args(cmd, model, foreign_plan))
    check_outcome(run, c.codes[cmd], c.message if c.codes[cmd] == 1 else "")


# ------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize("args,code", [
    (["--ratio", "0"], 0), (["--ratio", "1"], 2), (["--ratio", "-0.1"], 2), (["--ratio", "nan"], 2),
    (["--ratio", "inf"], 2), (["--ratio", "abc"], 2), (["--ratio", ""], 2), (["--ratio"], 2), ([], 2),
    (["--ratio", "0.5", "--max-ratio", "nan"], 2), (["--ratio", "0.5", "--max-ratio", "1.5"], 2),
    (["--ratio", "0.5", "--round-to", "0"], 2), (["--target-macs", "0"], 2), (["--target-macs", "nan"], 2),
    (["--target-params", "-1"], 2), (["--ratio-for", "*=nan"], 2), (["--ratio-for", "*=1"], 2),
    (["--ratio-for", "no-equals-sign"], 2), (["--ratio", "0.5", "--criterion", "nope"], 2),
])
def test_ratio_and_option_values(args: list[str], code: int, tmp_path: Path) -> None:
    model = save(base_model(), tmp_path)
    before = snapshot(tmp_path)
    run = gp("shrink", model, *args, "--json")
    check_outcome(run, code)
    assert_untouched(before, snapshot(tmp_path), allow_new=code == 0)
    if args == ["--ratio", "0"]:  # a valid no-op: nothing pruned, proof passes
        report = json.loads(run.out)
        assert report["params"]["after"] == report["params"]["before"] and report["verify"]["passed"]


@pytest.mark.parametrize("ratio", ["0.999", "0.999999"])
def test_no_group_is_pruned_to_zero_channels(ratio: str, tmp_path: Path) -> None:
    model = build_case("single_channel_group", tmp_path)
    out = tmp_path / "out.onnx"
    check_outcome(gp("shrink", model, "--ratio", ratio, "--max-ratio", "1", "-o", out), 0)
    pruned = onnx.load(str(out))
    assert all(0 not in t.dims for t in pruned.graph.initializer)
    dims = [d for vi in pruned.graph.value_info for d in vi.type.tensor_type.shape.dim if d.HasField("dim_value")]
    assert dims and all(d.dim_value > 0 for d in dims)


BUG_PLAN_KEEP = ("plan.py PruningPlan.load / pruner.apply_plan do not validate 'keep' indices: an empty list "
                 "crashes the proof in ORT (internal error), out-of-range fails in a pass, duplicate or negative "
                 "ones are only caught by the proof (and with --no-verify give a wrong model)")


@pytest.mark.parametrize("keep", [
    pytest.param([], id="empty"),
    pytest.param([0, 999], id="out_of_range"),
    pytest.param([0, 0, 1], id="duplicate"),
    pytest.param([-1, 0], id="negative"),
])
def test_plan_with_bad_keep_indices_is_refused(keep: list[int], tmp_path: Path, foreign_plan: Path) -> None:
    """Same model as the plan's (hash matches), keep lists edited: a usage error, nothing written."""
    model = save(base_model(seed=99), tmp_path)
    doc = json.loads(foreign_plan.read_text())
    for entry in doc["tensors"].values():
        for ax in entry["axes"].values():
            ax["keep"] = keep
    plan = tmp_path / "bad.json"
    plan.write_text(json.dumps(doc))
    before = snapshot(tmp_path)
    check_outcome(gp("apply-plan", model, plan, "-o", tmp_path / "out.onnx", "--no-verify"), 2, r"keep|channel")
    assert_untouched(before, snapshot(tmp_path), allow_new=False)


@pytest.mark.parametrize("content,message", [
    (None, r"does not exist"), ("", r"not valid JSON"), ("{not json", r"not valid JSON"),
    ("[1, 2]", r"not a graphprune plan"), ('{"graphprune_plan": 1, "tensors": {"w": {"axes": {"0": 5}}}}', r"malformed"),
    ("\x00\xff" * 10, r"not valid JSON"), ("dir", r"plan file"),
])
def test_malformed_plan_file(content: str | None, message: str, tmp_path: Path) -> None:
    model = save(base_model(), tmp_path)
    plan = tmp_path / "plan.json"
    if content == "dir":
        plan.mkdir()
    elif content is not None:
        plan.write_text(content)
    before = snapshot(tmp_path)
    check_outcome(gp("apply-plan", model, plan, "-o", tmp_path / "out.onnx"), 2, message)
    assert_untouched(before, snapshot(tmp_path), allow_new=False)


# ------------------------------------------------------------------------------------------ outputs
def _output_args(cmd: str, model: Path, plan: Path, dest: Path) -> list[object]:
    return {
        "shrink": ["shrink", model, "--ratio", "0.5", "-o", dest],
        "shrink --plan": ["shrink", model, "--ratio", "0.5", "-o", model.with_name("ok.onnx"), "--plan", dest],
        "shrink --report": ["shrink", model, "--ratio", "0.5", "-o", model.with_name("ok.onnx"), "--report", dest],
        "apply-plan": ["apply-plan", model, plan, "-o", dest],
        "build": ["build", model, "-t", "ort-cpu", "-o", dest],
        "profile --json": ["profile", model, "-t", "ort-cpu", *PROFILE_FAST, "--json", dest],
        "profile --csv": ["profile", model, "-t", "ort-cpu", *PROFILE_FAST, "--csv", dest],
    }[cmd]


OUTPUT_CMDS = ["shrink", "shrink --plan", "shrink --report", "apply-plan", "build", "profile --json",
               "profile --csv"]

@pytest.fixture
def own_plan(tmp_path: Path) -> tuple[Path, Path]:
    model = save(base_model(), tmp_path)
    plan = tmp_path / "plan.json"
    assert gp("shrink", model, "--ratio", "0.5", "-o", tmp_path / "first.onnx", "--plan", plan).rc == 0
    (tmp_path / "first.onnx").unlink()
    return model, plan


@pytest.mark.parametrize("cmd", OUTPUT_CMDS)
def test_output_equal_to_input(cmd: str, own_plan: tuple[Path, Path], request: pytest.FixtureRequest) -> None:
    model, plan = own_plan
    before = snapshot(model.parent)
    dest = model.with_name("model.optimized.onnx") if cmd == "build" else model
    if cmd == "build":  # build writes <stem>.optimized.onnx: name the input so that it would collide
        os.replace(model, dest)
        model, before = dest, snapshot(model.parent)
        dest = dest.with_name("model.onnx")
    run = gp(*_output_args(cmd, model, plan, dest))
    check_outcome(run, 2, r"input file")
    assert_untouched(before, snapshot(model.parent), allow_new=False)


@pytest.mark.parametrize("roles", [("--plan", "MODEL"), ("--report", "MODEL"), ("--plan", "--report"),
                                   ("-o", "--plan"), ("-o", "--report")])
def test_shrink_refuses_one_file_in_two_roles(roles: tuple[str, str], own_plan: tuple[Path, Path]) -> None:
    """E.g. ``--plan`` naming the input model: the plan would be written over it."""
    model, _ = own_plan
    paths = {"-o": model.with_name("out.onnx"), "--plan": model.with_name("p.json"),
             "--report": model.with_name("r.json")}
    shared = model if "MODEL" in roles else model.with_name("shared.out")
    for role in roles:
        if role != "MODEL":
            paths[role] = shared
    before = snapshot(model.parent)
    run = gp("shrink", model, "--ratio", "0.5", *[x for kv in paths.items() for x in kv])
    check_outcome(run, 2, r"input file|path")
    assert_untouched(before, snapshot(model.parent), allow_new=False)


def test_apply_plan_output_equal_to_plan(own_plan: tuple[Path, Path]) -> None:
    model, plan = own_plan
    before = snapshot(model.parent)
    check_outcome(gp("apply-plan", model, plan, "-o", plan), 2, r"plan file")
    assert_untouched(before, snapshot(model.parent), allow_new=False)


@pytest.mark.parametrize("cmd", OUTPUT_CMDS)
def test_output_in_missing_folder(cmd: str, own_plan: tuple[Path, Path], tmp_path: Path) -> None:
    model, plan = own_plan
    before = snapshot(tmp_path)
    check_outcome(gp(*_output_args(cmd, model, plan, tmp_path / "nope" / "x.out")), 2, r"does not exist")
    assert_untouched(before, snapshot(tmp_path), allow_new=False)


@pytest.mark.parametrize("cmd", OUTPUT_CMDS)
def test_output_is_a_directory(cmd: str, own_plan: tuple[Path, Path], tmp_path: Path) -> None:
    model, plan = own_plan
    (tmp_path / "adir.onnx").mkdir()
    before = snapshot(tmp_path)
    check_outcome(gp(*_output_args(cmd, model, plan, tmp_path / "adir.onnx")), 2, r"directory")
    assert_untouched(before, snapshot(tmp_path), allow_new=False)


@pytest.mark.parametrize("cmd", OUTPUT_CMDS)
def test_output_in_read_only_folder(cmd: str, own_plan: tuple[Path, Path], tmp_path: Path,
                                    request: pytest.FixtureRequest) -> None:
    model, plan = own_plan
    with read_only_dir(tmp_path / "ro") as ro:
        before = snapshot(tmp_path)
        check_outcome(gp(*_output_args(cmd, model, plan, ro / "x.out")), 2, r"not writable")
        assert_untouched(before, snapshot(tmp_path), allow_new=False)


@pytest.mark.parametrize("cmd", OUTPUT_CMDS)
def test_disk_full_tmpfs(cmd: str, own_plan: tuple[Path, Path], tmp_path: Path,
                         request: pytest.FixtureRequest) -> None:
    """A real full file system (tmpfs filled to ENOSPC; root only)."""
    model, plan = own_plan
    with tmpfs(tmp_path / "full", "size=64k", fill=True) as full:
        before = snapshot(tmp_path)
        check_outcome(gp(*_output_args(cmd, model, plan, full / "x.out")), 1, r"No space left")
        assert_untouched(before, snapshot(tmp_path), allow_new=False)


@pytest.mark.parametrize("cmd", ["shrink", "shrink --plan", "shrink --report", "apply-plan"])
def test_disk_full_simulated(cmd: str, own_plan: tuple[Path, Path], tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Everywhere (no root needed): Python-level writes below one folder fail with ENOSPC."""
    model, plan = own_plan
    full = tmp_path / "full"
    full.mkdir()
    before = snapshot(tmp_path)
    with disk_full_in_process(monkeypatch, full):
        run = gp(*_output_args(cmd, model, plan, full / "x.out"))
    check_outcome(run, 1, r"No space left")
    assert_untouched(before, snapshot(tmp_path), allow_new=False)


# -------------------------------------------------------------------------------------- > 2 GiB
def _wide_model() -> onnx.ModelProto:
    b = Builder(3)
    y = b.op("Relu", b.conv("x", 3, 16))
    y = b.op("Relu", b.conv(y, 16, 16))
    return b.model([onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
                   {b.conv(y, 16, 4, 1): ["N", 4, 8, 8]})


def test_over_protobuf_limit_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights over the (monkeypatched, 8 KiB) protobuf limit, stored as external data: the model loads,
    shape inference takes the weight-less path, shrink writes external data and apply-plan matches."""
    dense = tmp_path / "dense"
    dense.mkdir()
    onnx.save_model(_wide_model(), str(dense / "model.onnx"), save_as_external_data=True, location="w.bin",
                    size_threshold=0)
    reference = gp("shrink", dense / "model.onnx", "--ratio", "0.5", "-o", tmp_path / "ref.onnx", "--json")
    check_outcome(reference, 0)
    limit = 8 << 10
    assert (dense / "model.onnx").stat().st_size < limit < _wide_model().ByteSize()
    monkeypatch.setattr(model_io, "_PROTOBUF_LIMIT", limit)
    inferred_sizes: list[int] = []
    real_infer = model_io.shape_inference.infer_shapes

    def spy(model: onnx.ModelProto, *a: object, **k: object) -> onnx.ModelProto:
        inferred_sizes.append(model.ByteSize())
        return real_infer(model, *a, **k)

    monkeypatch.setattr(model_io.shape_inference, "infer_shapes", spy)
    before = snapshot(dense)
    analyzed = gp("analyze", dense / "model.onnx", "--json")
    check_outcome(analyzed, 0)
    assert inferred_sizes and max(inferred_sizes) < limit  # never inferred on the full-size model
    assert json.loads(analyzed.out)["group_counts"]["prunable"] >= 2
    out = tmp_path / "big" / "pruned.onnx"
    out.parent.mkdir()
    run = gp("shrink", dense / "model.onnx", "--ratio", "0.5", "-o", out, "--plan", tmp_path / "plan.json", "--json")
    check_outcome(run, 0)
    assert json.loads(run.out)["params"] == json.loads(reference.out)["params"]
    assert (out.parent / "pruned.onnx.data").is_file()  # weights went to external data
    again = tmp_path / "big" / "again.onnx"
    check_outcome(gp("apply-plan", dense / "model.onnx", tmp_path / "plan.json", "-o", again), 0)
    monkeypatch.undo()
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    ys = [ort.InferenceSession(str(p)).run(None, feeds)[0] for p in (tmp_path / "ref.onnx", out, again)]
    np.testing.assert_array_equal(ys[0], ys[1])
    np.testing.assert_array_equal(ys[1], ys[2])
    assert_untouched(before, snapshot(dense), allow_new=False)


# -------------------------------------------------------------------------- unsupported != crash
PARTIAL = {  # case -> what the frozen region's reason must say
    "if": r"control flow 'If'", "loop": r"control flow 'Loop'", "scan": r"control flow 'Scan'",
    "lstm": r"recurrent op 'LSTM'", "gru": r"recurrent op 'GRU'", "qdq": r"quantized op '(Quantize|Dequantize)Linear'",
    "conv_integer": r"quantized op 'ConvInteger'", "matmul_integer": r"quantized op 'MatMulInteger'",
    "contrib_domain": r"no channel rule for com\.microsoft::Gelu", "custom_domain": r"com\.example::Frobnicate",
}


@pytest.mark.parametrize("case", sorted(PARTIAL))
def test_partly_understood_model_prunes_the_safe_part(case: str, tmp_path: Path) -> None:
    model = build_case(case, tmp_path)
    run = gp("analyze", model, "--json")
    check_outcome(run, 0)
    doc = json.loads(run.out)
    reasons = [r for g in doc["groups"] if g["status"] == "frozen" for r in g["frozen_reasons"]]
    assert [r for r in reasons if re.search(PARTIAL[case], r)], reasons
    assert all(g["frozen_reasons"] for g in doc["groups"] if g["status"] == "frozen")  # each says why
    assert doc["group_counts"]["prunable"] >= 1
    runnable = CASES[case].codes["build"] == 0
    verify = [] if runnable else ["--no-verify"]
    out, plan = tmp_path / "pruned.onnx", tmp_path / "plan.json"
    run = gp("shrink", model, "--ratio", "0.5", "-o", out, "--plan", plan, "--json", *verify)
    check_outcome(run, 0)
    report = json.loads(run.out)
    assert report["groups"]["pruned"] >= 1 and report["params"]["after"] < report["params"]["before"]
    assert report["groups"]["frozen"] >= 1
    if runnable:
        assert report["verify"]["passed"] and report["verify"]["exact"]
    again = tmp_path / "again.onnx"
    check_outcome(gp("apply-plan", model, plan, "-o", again, *verify), 0)
    assert again.read_bytes() == out.read_bytes()


def test_unrunnable_model_proof_failure_is_typed(tmp_path: Path) -> None:
    """A custom op no runtime has: the proof cannot run, which must be said in one line (and point to
    --no-verify), not reported as an internal error."""
    model = build_case("custom_domain", tmp_path)
    check_outcome(gp("shrink", model, "--ratio", "0.5"), 1, r"Frobnicate")


def test_dynamic_rank_input_is_named(tmp_path: Path) -> None:
    model = build_case("dynamic_rank", tmp_path)
    check_outcome(gp("shrink", model, "--ratio", "0.5"), 1, r"input 'x' has no shape")


def test_corpus_script_writes_every_case(tmp_path: Path) -> None:
    from tests.corpus.make_corpus import main as make_main

    assert make_main([str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(CASES)
