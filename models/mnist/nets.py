"""MNIST-size versions of three zoo families, built from the zoo's own blocks (models/convnets.py,
models/sequence_nets.py) with a 1-channel stem: a ResNet (BasicBlock, BN, residual Add), a MobileNetV2
(depthwise 3x3, inverted residuals, ReLU6) and a small ViT (fused qkv attention, GELU MLP)."""

from __future__ import annotations

import torch
from torch import nn

from models.convnets import BasicBlock, ConvBNAct, InvertedResidual
from models.sequence_nets import ViT


class MnistResNet(nn.Module):
    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = ConvBNAct(1, width, 3)
        blocks, cin = [], width
        for i, planes in enumerate((width, 2 * width, 4 * width)):
            for j in range(2):
                blocks.append(BasicBlock(cin, planes, 2 if i > 0 and j == 0 else 1))
                cin = planes
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


# (expand t, channels c, repeats n, first stride s)
_MBV2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 1))


class MnistMobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, last: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(1, 16, 3, act=nn.ReLU6)]
        cin = 16
        for t, c, n, s in _MBV2:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(ConvBNAct(cin, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class MnistViT(ViT):
    def __init__(self, patch: int = 4, dim: int = 64, depth: int = 4, heads: int = 4, mlp_ratio: int = 2,
                 num_classes: int = 10) -> None:
        super().__init__(28, patch, dim, depth, heads, mlp_ratio, num_classes, in_channels=1, pos_std=0.02)


NETS = {"resnet": MnistResNet, "mobilenetv2": MnistMobileNetV2, "vit": MnistViT}


def build(name: str) -> nn.Module:
    return NETS[name]()
