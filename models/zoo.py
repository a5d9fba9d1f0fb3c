"""Registry of the committed zoo models: file, input spec, output spec. numpy only, no torch.

Shapes use ``"N"`` for the dynamic batch axis and ``"S"`` for a dynamic sequence axis; every other
dimension is fixed. ``models/export_zoo.py`` reads the same specs to build its example inputs, so the
files and this table cannot drift apart silently (``tests/test_zoo_files.py`` runs every entry).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["ZOO", "ZOO_DIR", "InputSpec", "ZooModel", "concrete_shape", "random_inputs", "zoo_path"]

ZOO_DIR = Path(__file__).resolve().parent / "zoo"

Dim = int | str


class InputSpec(NamedTuple):
    """One graph input: shape (ints, ``"N"``, ``"S"``), numpy dtype, and ``[low, high)`` for int inputs."""

    shape: tuple[Dim, ...]
    dtype: type[np.generic]
    value_range: tuple[int, int] | None = None


@dataclass(frozen=True)
class ZooModel:
    name: str
    file: Path  # relative to ZOO_DIR
    inputs: dict[str, InputSpec]
    description: str
    outputs: dict[str, tuple[Dim, ...]]
    source: str = "torch.onnx.export(dynamo=False), opset 17"

    @property
    def path(self) -> Path:
        return ZOO_DIR / self.file

    @property
    def dynamic_dims(self) -> frozenset[str]:
        return frozenset(d for spec in self.inputs.values() for d in spec.shape if isinstance(d, str))


def _image(channels: int = 3, size: int = 32) -> dict[str, InputSpec]:
    return {"input": InputSpec(("N", channels, size, size), np.float32)}


def _classes(n: int = 10) -> dict[str, tuple[Dim, ...]]:
    return {"output": ("N", n)}


_ENTRIES = [
    ZooModel(
        "small_cnn",
        Path("small_cnn.onnx"),
        _image(1, 28),
        "MNIST-size CNN, first conv has 1 input channel",
        _classes(),
    ),
    ZooModel(
        "resnet18",
        Path("resnet18.onnx"),
        _image(),
        "ResNet BasicBlocks, width 8, 3 stages; BN folded",
        _classes(),
    ),
    ZooModel(
        "resnet18_bn",
        Path("resnet18_bn.onnx"),
        _image(),
        "same ResNet-18 with BatchNormalization nodes kept (inference form)",
        _classes(),
        "torch.onnx.export(dynamo=False, training=PRESERVE), opset 17",
    ),
    ZooModel(
        "resnet50",
        Path("resnet50.onnx"),
        _image(),
        "ResNet-50 Bottlenecks, real depth 3-4-6-3, width 4",
        _classes(),
    ),
    ZooModel(
        "resnext", Path("resnext.onnx"), _image(), "ResNeXt bottlenecks with 4-group 3x3 conv", _classes()
    ),
    ZooModel(
        "mobilenetv2",
        Path("mobilenetv2.onnx"),
        _image(),
        "inverted residuals, depthwise 3x3, ReLU6 (Clip)",
        _classes(),
    ),
    ZooModel(
        "mobilenetv2_bn",
        Path("mobilenetv2_bn.onnx"),
        _image(),
        "same MobileNetV2 with BatchNormalization nodes kept (inference form)",
        _classes(),
        "torch.onnx.export(dynamo=False, training=PRESERVE), opset 17",
    ),
    ZooModel(
        "mobilenetv3",
        Path("mobilenetv3.onnx"),
        _image(),
        "MobileNetV3-Small: SE blocks, HardSwish, 5x5 depthwise",
        _classes(),
    ),
    ZooModel(
        "densenet",
        Path("densenet.onnx"),
        _image(),
        "dense blocks (multi-input Concat), pre-activation BN kept",
        _classes(),
    ),
    ZooModel(
        "unet",
        Path("unet.onnx"),
        _image(),
        "U-Net: maxpool encoder, ConvTranspose decoder, skip Concat",
        {"output": ("N", 2, 32, 32)},
    ),
    ZooModel(
        "yolo_c2f",
        Path("yolo_c2f.onnx"),
        _image(),
        "YOLOv8-style C2f (chunk and split), SPPF, Resize, PAN, head",
        {"output": ("N", 20, 21)},
    ),
    ZooModel(
        "convnext",
        Path("convnext.onnx"),
        _image(),
        "ConvNeXt: depthwise 7x7, channels-last LayerNorm, MatMul MLP, layer scale",
        _classes(),
    ),
    ZooModel(
        "vit",
        Path("vit.onnx"),
        _image(),
        "ViT patch 8: fused qkv reshape/permute attention, cls token",
        _classes(),
    ),
    ZooModel(
        "bert",
        Path("bert.onnx"),
        {"input_ids": InputSpec(("N", "S"), np.int64, (0, 512))},
        "BERT encoder, separate q/k/v, post-norm, Gather embeddings; dynamic sequence",
        {"output": ("N", "S", 32)},
    ),
    ZooModel(
        "lstm_model",
        Path("lstm_model.onnx"),
        {"input": InputSpec(("N", "S", 8), np.float32)},
        "2-layer batch-first LSTM + Linear head on the last step; dynamic sequence",
        _classes(),
    ),
    ZooModel(
        "resnet18_dynamo",
        Path("resnet18_dynamo.onnx"),
        _image(),
        "the ResNet-18 above exported by the dynamo (torch.export) exporter",
        _classes(),
        "torch.onnx.export(dynamo=True), opset 18 (the dynamo exporter's lowest)",
    ),
    ZooModel(
        "paddleocr_cls",
        Path("paddleocr_cls.onnx"),
        {"x": InputSpec(("N", 3, 48, 192), np.float32)},
        "PaddleOCR mobile v2.0 text-direction classifier (Paddle2ONNX): weights as Constant nodes, BN, SE",
        {"save_infer_model/scale_0.tmp_1": ("N", 2)},
        "rapidocr-onnxruntime 1.4.4 ch_ppocr_mobile_v2.0_cls_infer.onnx, opset 11",
    ),
]

ZOO: dict[str, ZooModel] = {entry.name: entry for entry in _ENTRIES}


def zoo_path(name: str) -> Path:
    """Absolute path of a zoo model's ONNX file (KeyError names the known models)."""
    if name not in ZOO:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(sorted(ZOO))}")
    return ZOO[name].path


def concrete_shape(shape: tuple[Dim, ...], batch: int, seq_len: int) -> tuple[int, ...]:
    """Replace ``"N"`` by ``batch`` and ``"S"`` by ``seq_len``."""
    dims = {"N": batch, "S": seq_len}
    return tuple(dims[d] if isinstance(d, str) else d for d in shape)


def random_inputs(name: str, batch: int = 1, seed: int = 0, seq_len: int = 8) -> dict[str, np.ndarray]:
    """Seeded inputs for a zoo model: standard normal floats, uniform ints in ``value_range``."""
    zoo_path(name)  # validates the name
    rng = np.random.default_rng(seed)
    feeds = {}
    for input_name, spec in ZOO[name].inputs.items():
        shape = concrete_shape(spec.shape, batch, seq_len)
        if np.issubdtype(spec.dtype, np.integer):
            low, high = spec.value_range or (0, 2)
            feeds[input_name] = rng.integers(low, high, size=shape, dtype=spec.dtype)
        else:
            feeds[input_name] = rng.standard_normal(shape).astype(spec.dtype)
    return feeds
