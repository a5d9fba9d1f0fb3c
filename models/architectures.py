"""Zoo architectures in plain PyTorch, and the seeded builder every export goes through.

Every builder's defaults give the published full-size network (for benchmarks); ``export_zoo.TINY``
passes narrow configs for the small committed test files. No torchvision or timm: they pull a CUDA
build of torch, and writing the layers out keeps visible which torch idiom makes which ONNX pattern
(``torch.chunk`` vs ``torch.split``, ``Linear`` on 2-D vs 4-D input, hand-written attention reshapes).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from models.convnets import (
    MOBILENETV2_SETTINGS,
    MOBILENETV3_SMALL,
    convnext,
    densenet,
    mobilenetv2,
    mobilenetv3,
    resnet18,
    resnet50,
    resnext,
    small_cnn,
    unet,
    yolo_c2f,
)
from models.sequence_nets import bert, lstm_model, vit

__all__ = [
    "MOBILENETV2_SETTINGS",
    "MOBILENETV3_SMALL",
    "bert",
    "build",
    "convnext",
    "densenet",
    "lstm_model",
    "mobilenetv2",
    "mobilenetv3",
    "resnet18",
    "resnet50",
    "resnext",
    "small_cnn",
    "unet",
    "vit",
    "yolo_c2f",
]


# --------------------------------------------------------------------------------------------- init


def build(builder: Callable[..., nn.Module], seed: int = 0, **config: object) -> nn.Module:
    """Construct ``builder(**config)`` under ``seed`` with non-trivial norms, in eval mode."""
    torch.manual_seed(seed)
    model = builder(**config)
    _init_weights(model, seed)
    return model.eval()


def _init_weights(model: nn.Module, seed: int) -> None:
    """Seeded init that keeps activations near unit scale and makes every norm a real affine map.

    BatchNorm gets random running statistics and affine parameters (an identity BN would hide bugs
    in folding and in channel pruning); LayerNorm and ConvNeXt's layer-scale get random affines too.
    """
    gen = torch.Generator().manual_seed(seed)

    def uniform(shape: torch.Size, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=gen)

    def normal(shape: torch.Size, std: float) -> torch.Tensor:
        return std * torch.randn(shape, generator=gen)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                fan_in = module.weight[0].numel()  # per output channel: in/groups * kh * kw
                module.weight.copy_(normal(module.weight.shape, math.sqrt(2.0 / fan_in)))
                if module.bias is not None:
                    module.bias.copy_(normal(module.bias.shape, 0.05))
            elif isinstance(module, nn.BatchNorm2d):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.copy_(normal(module.running_mean.shape, 0.1))
                module.running_var.copy_(uniform(module.running_var.shape, 0.5, 2.0))
                module.weight.copy_(uniform(module.weight.shape, 0.5, 1.5))
                module.bias.copy_(normal(module.bias.shape, 0.1))
            elif isinstance(module, nn.LayerNorm):
                module.weight.copy_(uniform(module.weight.shape, 0.5, 1.5))
                module.bias.copy_(normal(module.bias.shape, 0.1))
        for name, param in model.named_parameters():
            if name.endswith("gamma"):  # ConvNeXt layer scale: 1e-6 at init would zero the branch
                param.copy_(uniform(param.shape, 0.1, 1.0))
            elif name.endswith(("cls_token", "pos_embed")):
                param.copy_(normal(param.shape, 0.02))
