"""MNIST-size versions of three zoo families, built from the zoo's own blocks (models/convnets.py,
models/sequence_nets.py) with a 1-channel stem: a ResNet (BasicBlock, BN, residual Add), a MobileNetV2
(depthwise 3x3, inverted residuals, ReLU6) and a small ViT (fused qkv attention, GELU MLP)."""

from __future__ import annotations

import torch
from torch import nn

from models.convnets import BasicBlock, ConvBNAct, InvertedResidual
from models.sequence_nets import ViTBlock


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


class MnistViT(nn.Module):
    def __init__(self, patch: int = 4, dim: int = 64, depth: int = 4, heads: int = 4, mlp_ratio: int = 2,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(1, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, (28 // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


NETS = {"resnet": MnistResNet, "mobilenetv2": MnistMobileNetV2, "vit": MnistViT}


def build(name: str) -> nn.Module:
    return NETS[name]()
