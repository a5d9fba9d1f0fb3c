"""Export the zoo to ONNX: the tiny committed files, or full-size models for benchmarks.

    python models/export_zoo.py                              # tiny models -> models/zoo/
    python models/export_zoo.py --out /tmp/big --full resnet50 bert_base

Tiny files use the legacy TorchScript exporter (``dynamo=False``), opset 17, eval mode, constant
folding on, a dynamic batch axis (and sequence axis for bert/lstm). The legacy exporter folds
eval-mode BatchNorm into the preceding Conv; the ``*_bn`` variants are exported with
``training=TrainingMode.PRESERVE`` on an eval-mode model, which skips that fold but still emits
inference-form BatchNormalization (one output). Every export is checked with
``onnx.checker.check_model(full_check=True)`` and against torch with ONNX Runtime before it is kept.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

if __package__ in (None, ""):  # run as a script: make `models` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import architectures as arch  # noqa: E402
from models.zoo import ZOO, ZOO_DIR, InputSpec, concrete_shape  # noqa: E402

log = logging.getLogger(__name__)

OPSET = 17
DYNAMO_OPSET = 18  # asked for 17, the dynamo exporter builds 18 and its down-conversion fails (Reduce* axes)
EXPORT_BATCH, EXPORT_SEQ = 2, 16  # trace with batch 2 so nothing specialises on batch 1


@dataclass(frozen=True)
class ExportSpec:
    builder: Callable[..., nn.Module]
    config: dict[str, object] = field(default_factory=dict)
    keep_bn: bool = False
    dynamo: bool = False
    seed: int = 0


_MBV2_TINY = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 2, 2),
    (6, 64, 2, 2),
    (6, 96, 1, 1),
    (6, 160, 1, 2),
    (6, 320, 1, 1),
)
_MBV3_TINY = tuple(arch.MOBILENETV3_SMALL[i] for i in (0, 1, 2, 3, 4, 6, 8, 9))

TINY: dict[str, ExportSpec] = {
    "small_cnn": ExportSpec(arch.small_cnn),
    "resnet18": ExportSpec(arch.resnet18, {"width": 8, "layers": (2, 2, 2), "num_classes": 10}),
    "resnet18_bn": ExportSpec(
        arch.resnet18, {"width": 8, "layers": (2, 2, 2), "num_classes": 10}, keep_bn=True
    ),
    "resnet18_dynamo": ExportSpec(
        arch.resnet18, {"width": 8, "layers": (2, 2, 2), "num_classes": 10}, dynamo=True
    ),
    "resnet50": ExportSpec(arch.resnet50, {"width": 4, "num_classes": 10}),
    "resnext": ExportSpec(
        arch.resnext, {"width": 8, "layers": (1, 1, 1), "groups": 4, "base_width": 16, "num_classes": 10}
    ),
    "mobilenetv2": ExportSpec(
        arch.mobilenetv2, {"width_mult": 0.25, "settings": _MBV2_TINY, "last_channel": 128, "num_classes": 10}
    ),
    "mobilenetv2_bn": ExportSpec(
        arch.mobilenetv2,
        {"width_mult": 0.25, "settings": _MBV2_TINY, "last_channel": 128, "num_classes": 10},
        keep_bn=True,
    ),
    "mobilenetv3": ExportSpec(
        arch.mobilenetv3, {"width_mult": 0.25, "settings": _MBV3_TINY, "last_channel": 256, "num_classes": 10}
    ),
    "densenet": ExportSpec(
        arch.densenet, {"growth": 8, "block_config": (2, 2, 2), "init_features": 16, "num_classes": 10}
    ),
    "unet": ExportSpec(arch.unet, {"width": 8, "depth": 2}),
    "yolo_c2f": ExportSpec(
        arch.yolo_c2f, {"widths": (8, 8, 16, 16, 32), "depths": (1, 1, 1, 1), "num_classes": 4, "reg_max": 4}
    ),
    "convnext": ExportSpec(arch.convnext, {"dims": (16, 32, 64), "depths": (1, 1, 1), "num_classes": 10}),
    "vit": ExportSpec(
        arch.vit, {"image_size": 32, "patch": 8, "dim": 32, "depth": 2, "heads": 4, "num_classes": 10}
    ),
    "bert": ExportSpec(
        arch.bert,
        {"vocab": 512, "hidden": 32, "layers": 2, "heads": 4, "intermediate": 128, "max_positions": 64},
    ),
    "lstm_model": ExportSpec(arch.lstm_model, {"input_size": 8, "hidden": 16, "layers": 2}),
}


@dataclass(frozen=True)
class FullSpec:
    export: ExportSpec
    inputs: dict[str, InputSpec]
    outputs: dict[str, tuple[int | str, ...]]


def _full_image(builder: Callable[..., nn.Module], size: int = 224, classes: int = 1000) -> FullSpec:
    return FullSpec(
        ExportSpec(builder),
        {"input": InputSpec(("N", 3, size, size), np.float32)},
        {"output": ("N", classes)},
    )


# Full-size models for benchmarks (never committed: tens to hundreds of MB).
FULL: dict[str, FullSpec] = {
    "resnet18": _full_image(arch.resnet18),
    "resnet50": _full_image(arch.resnet50),
    "resnext50": _full_image(arch.resnext),
    "mobilenetv2": _full_image(arch.mobilenetv2),
    "mobilenetv3": _full_image(arch.mobilenetv3),
    "densenet121": _full_image(arch.densenet),
    "convnext_tiny": _full_image(arch.convnext),
    "vit_b16": _full_image(arch.vit),
    "yolov8n": FullSpec(
        ExportSpec(arch.yolo_c2f),
        {"input": InputSpec(("N", 3, 640, 640), np.float32)},
        {"output": ("N", 144, 8400)},
    ),
    "unet": FullSpec(
        ExportSpec(arch.unet),
        {"input": InputSpec(("N", 3, 256, 256), np.float32)},
        {"output": ("N", 2, 256, 256)},
    ),
    "bert_base": FullSpec(
        ExportSpec(arch.bert),
        {"input_ids": InputSpec(("N", "S"), np.int64, (0, 30522))},
        {"output": ("N", "S", 768)},
    ),
}
FULL_SEQ = 128  # BERT-base example sequence length


def _dynamic_axes(specs: dict[str, tuple[int | str, ...]]) -> dict[str, dict[int, str]]:
    return {name: {i: d for i, d in enumerate(shape) if isinstance(d, str)} for name, shape in specs.items()}


def export_model(
    spec: ExportSpec,
    path: Path,
    inputs: dict[str, InputSpec],
    outputs: dict[str, tuple[int | str, ...]],
    seq_len: int = EXPORT_SEQ,
) -> onnx.ModelProto:
    """Build the model, export it to ``path``, then check it and compare it with torch in ORT."""
    model = arch.build(spec.builder, seed=spec.seed, **spec.config)
    rng = np.random.default_rng(spec.seed)
    feeds = {}
    for name, inp in inputs.items():
        shape = concrete_shape(inp.shape, EXPORT_BATCH, seq_len)
        if inp.value_range is not None:
            feeds[name] = rng.integers(*inp.value_range, size=shape, dtype=inp.dtype)
        else:
            feeds[name] = rng.standard_normal(shape).astype(inp.dtype)
    args = tuple(torch.from_numpy(a) for a in feeds.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        if spec.dynamo:
            _export_dynamo(model, args, path, inputs, outputs)
        else:
            torch.onnx.export(
                model,
                args,
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=list(inputs),
                output_names=list(outputs),
                dynamic_axes=_dynamic_axes({**{k: v.shape for k, v in inputs.items()}, **outputs}),
                do_constant_folding=True,
                training=torch.onnx.TrainingMode.PRESERVE if spec.keep_bn else torch.onnx.TrainingMode.EVAL,
            )
    onnx.checker.check_model(str(path), full_check=True)
    exported = onnx.load(str(path))
    if spec.keep_bn:
        bns = [n for n in exported.graph.node if n.op_type == "BatchNormalization"]
        if not bns or any(len(n.output) != 1 for n in bns):
            raise RuntimeError(f"{path.name}: expected inference-form BatchNormalization nodes")
    with torch.no_grad():
        expected = model(*args)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, feeds)
    expected_np = expected.numpy()
    atol = 1e-4 * max(1.0, float(np.abs(expected_np).max()))  # deep random nets reach logits in the 100s
    np.testing.assert_allclose(got, expected_np, rtol=1e-3, atol=atol, err_msg=f"{path.name} vs torch")
    return exported


def _export_dynamo(
    model: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: dict[str, InputSpec],
    outputs: dict[str, tuple[int | str, ...]],
) -> None:
    dims = {
        d: torch.export.Dim(d, min=1, max=1024)
        for spec in inputs.values()
        for d in spec.shape
        if isinstance(d, str)
    }
    dynamic_shapes = tuple(
        {i: dims[d] for i, d in enumerate(spec.shape) if isinstance(d, str)} for spec in inputs.values()
    )
    program = torch.onnx.export(
        model,
        args,
        dynamo=True,
        opset_version=DYNAMO_OPSET,
        input_names=list(inputs),
        output_names=list(outputs),
        dynamic_shapes=dynamic_shapes,
        optimize=True,
        verbose=False,
    )
    assert program is not None
    program.save(str(path), external_data=False)
    # Node metadata carries stack traces with absolute source paths: drop it so the committed file
    # leaks no local paths and is reproducible from any checkout.
    proto = onnx.load(str(path))
    for node in proto.graph.node:
        del node.metadata_props[:]
    onnx.save(proto, str(path))


def op_summary(model: onnx.ModelProto) -> str:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return " ".join(f"{op}:{n}" for op, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def param_count(model: onnx.ModelProto) -> int:
    """Float weights, whether stored as initializers or as Constant nodes."""
    tensors = list(model.graph.initializer)
    tensors += [
        a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"
    ]
    return sum(
        int(np.prod(t.dims))
        for t in tensors
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    )


def export_tiny(names: list[str], out_dir: Path) -> None:
    for name in names:
        entry = ZOO[name]
        path = out_dir / entry.file
        model = export_model(TINY[name], path, entry.inputs, entry.outputs)
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        print(
            f"{name:16s} {path.stat().st_size / 1024:7.1f} KB  opset {opset}  params {param_count(model):>8d}  {op_summary(model)}"
        )


def export_full(names: list[str], out_dir: Path) -> None:
    for name in names:
        full = FULL[name]
        path = out_dir / f"{name}.onnx"
        model = export_model(full.export, path, full.inputs, full.outputs, seq_len=FULL_SEQ)
        print(
            f"{name:16s} {path.stat().st_size / 2**20:7.1f} MB  params {param_count(model):>10d}  {op_summary(model)}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ZOO_DIR, help="output folder (default: models/zoo)")
    parser.add_argument(
        "--full", nargs="+", metavar="NAME", choices=sorted(FULL), help="export full-size models instead"
    )
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", choices=sorted(TINY), help="export only these tiny models"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" notices
    if args.full:
        export_full(args.full, args.out)
    else:
        export_tiny(args.only or list(TINY), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
