"""Bad-input corpus: every malformed, unsafe or only partly supported model the CLI must survive.

Nothing here is committed as a binary: each case is a small function that writes its files into an
empty folder and returns the MODEL argument to pass to the CLI.  ``CASES`` holds, as data, what every
command must do with it (exit code, and a regex the one ``Error:`` line must match).

    python -m tests.corpus.make_corpus OUT_DIR      # write every case into OUT_DIR/<case>/ for a look

Exit codes: 0 success, 1 model/runtime error, 2 usage error.  ``apply-plan`` always gets a valid plan
made from *another* model (:func:`base_model`), so a model that loads is refused as "not the model"
(exit 2); everything that cannot be loaded fails first (exit 1).
"""


from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.corpus import external as ext
from tests.corpus import models as m

COMMANDS = ("analyze", "shrink", "apply-plan", "build", "profile")


# ------------------------------------------------------------------------------------------ cases
@dataclass(frozen=True)
class Case:
    """One corpus entry: how to make it, and what each command must do with it."""

    name: str
    make: Callable[[Path], Path]
    codes: Mapping[str, int]
    message: str = ""  # regex for the Error line of every failing command
    about: str = ""
    escapes: bool = False  # external data outside the model folder: must be refused before any open
    xfail: Mapping[str, str] = field(default_factory=dict)  # command -> known bug (reported, not ours to fix)


def _all(code: int) -> dict[str, int]:
    return dict.fromkeys(COMMANDS, code)


# A model that loads: analyze/shrink/build/profile succeed, apply-plan refuses the other model's plan.
LOADS = {"analyze": 0, "shrink": 0, "apply-plan": 2, "build": 0, "profile": 0}
# Analysable but not runnable by ONNX Runtime: no proof possible, no build.
NOT_RUNNABLE = {"analyze": 0, "shrink": 1, "apply-plan": 2, "build": 1, "profile": 1}

# Bugs outside the files this corpus's owner may fix: the tests are strict xfails until they are fixed.
BUG_CLEANUP_BLAMES_PRUNED = ("passes/cleanup.py: the full ONNX check on the pruned model fails on a defect the "
                             "input already has (a graph input typed without a shape, which ONNX Runtime "
                             "accepts), so such models cannot be shrunk and the message blames pruning")

_ESCAPE = r"external data location .* (escapes the model folder|is an absolute path|resolves outside)"

def _ort_runs(build: object) -> bool:
    """Whether this ONNX Runtime runs a case's model at all (0-channel convs: 1.31 refuses, 1.32 runs)."""
    import tempfile

    import numpy as np
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = build(Path(tmp))  # type: ignore[operator]
        try:
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, 3, 8, 8), np.float32)})
        except Exception:
            return False
    return True


CASES: dict[str, Case] = {c.name: c for c in [
    Case("missing", m.missing, _all(1), r"no such file"),
    Case("empty", m.empty, _all(1), r"file is empty"),
    Case("directory", m.directory, _all(1), r"is a directory"),
    Case("truncated", m.truncated, _all(1), r"not a valid ONNX"),
    Case("truncated_tail", m.truncated_tail, _all(1), r"not a valid ONNX"),
    Case("random_bytes", m.random_bytes, _all(1), r"not a valid ONNX"),
    Case("text_file", m.text_file, _all(1), r"not a valid ONNX"),
    Case("tensor_proto", m.tensor_proto, _all(1), r"not a valid ONNX"),
    Case("huge", m.huge, _all(1), r"2 GiB", about="sparse file just over the protobuf limit"),
    Case("future_ir_version", m.future_ir_version, _all(1), r"IR version 99"),
    Case("output_without_shape", m.output_without_shape, LOADS),
    Case("sparse_initializer", m.sparse_initializer, LOADS),
    Case("cycle", m.cycle, _all(1), r"cycle"),
    Case("unsorted", m.unsorted, LOADS, about="nodes out of topological order are sorted"),
    Case("dangling_node_input", m.dangling_node_input, _all(1), r"reads tensor 'ghost'"),
    Case("dangling_graph_output", m.dangling_graph_output, _all(1), r"graph output 'nowhere'"),
    Case("unused_graph_input", m.unused_graph_input, LOADS),
    Case("duplicate_output", m.duplicate_output, _all(1), r"produced twice"),
    Case("duplicate_initializer", m.duplicate_initializer, _all(1), r"appears 2 times"),
    Case("duplicate_graph_input", m.duplicate_graph_input, _all(1), r"appears 2 times"),
    Case("initializer_shadows_output", m.initializer_shadows_node_output, _all(1), r"produced twice"),
    Case("duplicate_node_names", m.duplicate_node_names, _all(1), r"node name 'n' appears \d+ times"),
    Case("no_nodes", m.no_nodes, LOADS, about="identity graph: nothing to prune"),
    Case("future_opset", m.future_opset, _all(1), r"opset 99"),
    Case("old_opset", m.old_opset, LOADS, about="opset 9, converted to 13"),
    Case("untested_opset", m.untested_opset, LOADS, about="opset 24: newer than the tested range, a warning"),
    Case("ancient_opset", m.ancient_opset, {**LOADS, "build": 1, "profile": 1}, r"Relu\(1\)",
         about="opset 1: graphprune converts it; ONNX Runtime has no kernels that old"),
    Case("no_default_opset", m.no_default_opset, _all(1), r"opset"),
    Case("unknown_op", m.unknown_op, NOT_RUNNABLE, r"FrobnicateChannels"),
    Case("custom_domain", m.custom_domain, NOT_RUNNABLE, r"Frobnicate"),
    Case("contrib_domain", m.contrib_domain, LOADS, about="com.microsoft::Gelu"),
    Case("if", m.if_model, LOADS),
    Case("loop", m.loop, LOADS),
    Case("scan", m.scan, LOADS),
    Case("lstm", m.recurrent("LSTM"), LOADS),
    Case("gru", m.recurrent("GRU"), LOADS),
    Case("qdq", m.qdq, LOADS),
    Case("conv_integer", m.conv_integer, LOADS),
    Case("matmul_integer", m.matmul_integer, LOADS),
    Case("dynamic_rank", m.dynamic_rank, {**LOADS, "shrink": 1, "profile": 1}, r"shape|rank",
         about="nothing prunable; no random inputs can be made without a rank"),
    Case("zero_channels", m.zero_channels, LOADS if _ort_runs(m.zero_channels) else NOT_RUNNABLE, r"channel",
         about="ONNX Runtime's NCHWc rewrite refuses 0-channel convs"),
    Case("single_channel_group", m.single_channel_group, LOADS),
    Case("external_ok", ext.external_ok, LOADS, about="external data in a sub-folder"),
    Case("external_missing", ext.external_missing, _all(1), r"external data file .* is missing"),
    Case("external_truncated", ext.external_truncated, _all(1), r"external data file .* is truncated"),
    Case("escape_dotdot", ext.escape_dotdot, _all(1), _ESCAPE, escapes=True),
    Case("escape_absolute", ext.escape_absolute, _all(1), _ESCAPE, escapes=True),
    Case("escape_symlink", ext.escape_symlink, _all(1), _ESCAPE, escapes=True),
    Case("escape_symlinked_dir", ext.escape_symlinked_dir, _all(1), _ESCAPE, escapes=True),
    Case("escape_fifo", ext.escape_fifo, _all(1), _ESCAPE, escapes=True),
    Case("escape_in_constant", ext.escape_in_constant, _all(1), _ESCAPE, escapes=True),
    Case("escape_in_subgraph", ext.escape_in_subgraph, _all(1), _ESCAPE, escapes=True),
    Case("escape_sparse", ext.escape_sparse, _all(1), _ESCAPE, escapes=True),
    Case("escape_in_function", ext.escape_in_function, _all(1), _ESCAPE, escapes=True),
]}


def build_case(name: str, dest: Path) -> Path:
    """Write case ``name`` into the empty folder ``dest``; return the MODEL argument."""
    dest.mkdir(parents=True, exist_ok=True)
    return CASES[name].make(dest)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(next(ln.strip() for ln in (__doc__ or "").splitlines() if "python -m" in ln), file=sys.stderr)
        return 2
    root = Path(argv[0])
    for name, case in CASES.items():
        p = build_case(name, root / name)
        codes = " ".join(f"{c}={case.codes[c]}" for c in COMMANDS)
        print(f"{name:28s} {p.relative_to(root)!s:36s} {codes}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
