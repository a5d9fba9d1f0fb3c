"""Convolutional zoo architectures in plain PyTorch: ResNet/ResNeXt, MobileNetV2/V3, DenseNet, U-Net,
YOLOv8-style C2f, ConvNeXt and an MNIST-size CNN. Builder defaults are the published full-size networks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of ``divisor`` without losing more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNAct(nn.Sequential):
    """Conv (no bias) + BatchNorm + optional activation: the unit of most CNNs here."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: Callable[[], nn.Module] | None = nn.ReLU,
    ) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            act() if act is not None else nn.Identity(),
        )


# ------------------------------------------------------------------------------- ResNet / ResNeXt


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(cin, planes, 3, stride)
        self.conv2 = ConvBNAct(planes, planes, 3, act=None)
        self.downsample = (
            ConvBNAct(cin, planes, 1, stride, act=None) if stride != 1 or cin != planes else None
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand by 4; projection shortcut when shapes change."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        width = int(planes * base_width / 64) * groups
        cout = planes * self.expansion
        self.conv1 = ConvBNAct(cin, width, 1)
        self.conv2 = ConvBNAct(width, width, 3, stride, groups=groups)
        self.conv3 = ConvBNAct(width, cout, 1, act=None)
        self.downsample = ConvBNAct(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + identity)


class ResNet(nn.Module):
    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        width: int = 64,
        num_classes: int = 1000,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(ConvBNAct(3, width, 7, 2), nn.MaxPool2d(3, 2, 1))
        stages: list[nn.Module] = []
        cin = width
        for i, depth in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, planes, 2 if i > 0 and j == 0 else 1, groups, base_width))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.stages(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


def resnet18(width: int = 64, num_classes: int = 1000, layers: Sequence[int] = (2, 2, 2, 2)) -> nn.Module:
    return ResNet(BasicBlock, layers, width, num_classes)


def resnet50(width: int = 64, num_classes: int = 1000, layers: Sequence[int] = (3, 4, 6, 3)) -> nn.Module:
    return ResNet(Bottleneck, layers, width, num_classes)


def resnext(
    width: int = 64,
    num_classes: int = 1000,
    layers: Sequence[int] = (3, 4, 6, 3),
    groups: int = 32,
    base_width: int = 4,
) -> nn.Module:
    """ResNeXt-50 32x4d by default: bottleneck width ``planes * base_width / 64 * groups``."""
    return ResNet(Bottleneck, layers, width, num_classes, groups, base_width)


# ------------------------------------------------------------------------------------ MobileNets

# (expand ratio t, channels c, repeats n, first stride s)
MOBILENETV2_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, depthwise 3x3, linear 1x1 project; Add only when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [ConvBNAct(cin, hidden, 1, act=nn.ReLU6)] if expand != 1 else []
        layers += [ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6)]
        layers += [ConvBNAct(hidden, cout, 1, act=None)]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_residual else self.block(x)


def mobilenetv2(
    width_mult: float = 1.0,
    num_classes: int = 1000,
    settings: Sequence[tuple[int, int, int, int]] = MOBILENETV2_SETTINGS,
    last_channel: int = 1280,
) -> nn.Module:
    cin = make_divisible(32 * width_mult)
    layers: list[nn.Module] = [ConvBNAct(3, cin, 3, 2, act=nn.ReLU6)]
    for t, c, n, s in settings:
        cout = make_divisible(c * width_mult)
        for i in range(n):
            layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
            cin = cout
    last = make_divisible(last_channel * max(1.0, width_mult))
    layers += [ConvBNAct(cin, last, 1, act=nn.ReLU6), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    return nn.Sequential(*layers, nn.Dropout(0.2), nn.Linear(last, num_classes))


# (kernel, expanded channels, out channels, squeeze-excite, hardswish, stride): MobileNetV3-Small
MOBILENETV3_SMALL = (
    (3, 16, 16, True, False, 2),
    (3, 72, 24, False, False, 2),
    (3, 88, 24, False, False, 1),
    (5, 96, 40, True, True, 2),
    (5, 240, 40, True, True, 1),
    (5, 240, 40, True, True, 1),
    (5, 120, 48, True, True, 1),
    (5, 144, 48, True, True, 1),
    (5, 288, 96, True, True, 2),
    (5, 576, 96, True, True, 1),
    (5, 576, 96, True, True, 1),
)


class SqueezeExcite(nn.Module):
    """GlobalAvgPool -> 1x1 Conv -> ReLU -> 1x1 Conv -> Hardsigmoid -> Mul with the input."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class InvertedResidualV3(nn.Module):
    def __init__(
        self, cin: int, kernel: int, hidden: int, cout: int, use_se: bool, hardswish: bool, stride: int
    ) -> None:
        super().__init__()
        act = nn.Hardswish if hardswish else nn.ReLU
        layers: list[nn.Module] = [ConvBNAct(cin, hidden, 1, act=act)] if hidden != cin else []
        layers.append(ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, act=act))
        if use_se:
            layers.append(SqueezeExcite(hidden, make_divisible(hidden // 4)))
        layers.append(ConvBNAct(hidden, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_residual else self.block(x)


def mobilenetv3(
    width_mult: float = 1.0,
    num_classes: int = 1000,
    settings: Sequence[tuple[int, int, int, bool, bool, int]] = MOBILENETV3_SMALL,
    last_channel: int = 1024,
) -> nn.Module:
    """MobileNetV3-Small by default."""
    cin = make_divisible(16 * width_mult)
    layers: list[nn.Module] = [ConvBNAct(3, cin, 3, 2, act=nn.Hardswish)]
    for kernel, exp, out, use_se, hardswish, stride in settings:
        cout = make_divisible(out * width_mult)
        layers.append(
            InvertedResidualV3(cin, kernel, make_divisible(exp * width_mult), cout, use_se, hardswish, stride)
        )
        cin = cout
    head = make_divisible(last_channel * width_mult)
    layers += [ConvBNAct(cin, 6 * cin, 1, act=nn.Hardswish), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    classifier = [nn.Linear(6 * cin, head), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(head, num_classes)]
    return nn.Sequential(*layers, *classifier)


# -------------------------------------------------------------------------------------- DenseNet


class DenseLayer(nn.Module):
    """Pre-activation BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 over the concat of all earlier features."""

    def __init__(self, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(),
            nn.Conv2d(cin, bn_size * growth, 1, bias=False),
            nn.BatchNorm2d(bn_size * growth),
            nn.ReLU(),
            nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.layers(torch.cat(features, 1))


class DenseBlock(nn.ModuleList):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self:
            features.append(layer(features))
        return torch.cat(features, 1)


def densenet(
    growth: int = 32,
    block_config: Sequence[int] = (6, 12, 24, 16),
    init_features: int = 64,
    bn_size: int = 4,
    num_classes: int = 1000,
) -> nn.Module:
    """DenseNet-121 by default; transitions halve channels (BN-ReLU-Conv1x1-AvgPool)."""
    layers: list[nn.Module] = [ConvBNAct(3, init_features, 7, 2), nn.MaxPool2d(3, 2, 1)]
    channels = init_features
    for i, depth in enumerate(block_config):
        layers.append(DenseBlock(DenseLayer(channels + j * growth, growth, bn_size) for j in range(depth)))
        channels += depth * growth
        if i != len(block_config) - 1:
            transition = [
                nn.BatchNorm2d(channels),
                nn.ReLU(),
                nn.Conv2d(channels, channels // 2, 1, bias=False),
            ]
            layers += [*transition, nn.AvgPool2d(2, 2)]
            channels //= 2
    layers += [nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    return nn.Sequential(*layers, nn.Linear(channels, num_classes))


# ------------------------------------------------------------------------------------------ U-Net


class UNet(nn.Module):
    """Encoder (double conv + maxpool), decoder (ConvTranspose2d x2, concat skip, double conv), 1x1 head."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, width: int = 64, depth: int = 4) -> None:
        super().__init__()
        chans = [width * 2**i for i in range(depth + 1)]

        def double_conv(cin: int, cout: int) -> nn.Module:
            return nn.Sequential(ConvBNAct(cin, cout), ConvBNAct(cout, cout))

        self.inc = double_conv(in_channels, chans[0])
        self.pool = nn.MaxPool2d(2)
        self.downs = nn.ModuleList(double_conv(chans[i], chans[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(chans[i + 1], chans[i], 2, 2) for i in reversed(range(depth))
        )
        self.up_convs = nn.ModuleList(double_conv(2 * chans[i], chans[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(self.pool(skips[-1])))
        x = skips.pop()
        for up, conv in zip(self.ups, self.up_convs, strict=True):
            x = conv(torch.cat([skips.pop(), up(x)], 1))
        return self.head(x)


def unet(in_channels: int = 3, num_classes: int = 2, width: int = 64, depth: int = 4) -> nn.Module:
    return UNet(in_channels, num_classes, width, depth)


# ------------------------------------------------------------------------------------- YOLO (C2f)


def yolo_conv(cin: int, cout: int, kernel: int = 1, stride: int = 1) -> nn.Module:
    return ConvBNAct(cin, cout, kernel, stride, act=nn.SiLU)


class YoloBottleneck(nn.Module):
    def __init__(self, channels: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = yolo_conv(channels, channels, 3)
        self.cv2 = yolo_conv(channels, channels, 3)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.shortcut else y


class C2f(nn.Module):
    """1x1 conv to 2c, split in two halves, chain bottlenecks off the second, concat all, 1x1 conv.

    ``use_split`` picks ``torch.split`` over ``torch.chunk`` (Ultralytics has both forwards) so the
    zoo holds both exports.
    """

    def __init__(
        self, cin: int, cout: int, n: int = 1, shortcut: bool = False, use_split: bool = False
    ) -> None:
        super().__init__()
        self.c = cout // 2
        self.cv1 = yolo_conv(cin, 2 * self.c)
        self.cv2 = yolo_conv((2 + n) * self.c, cout)
        self.m = nn.ModuleList(YoloBottleneck(self.c, shortcut) for _ in range(n))
        self.use_split = use_split

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv1(x)
        parts = list(y.split((self.c, self.c), 1) if self.use_split else y.chunk(2, 1))
        parts.extend(m(parts[-1]) for m in self.m)
        return self.cv2(torch.cat(parts, 1))


class SPPF(nn.Module):
    """1x1 conv to half, three chained 5x5 stride-1 maxpools, concat the four, 1x1 conv."""

    def __init__(self, cin: int, cout: int, kernel: int = 5) -> None:
        super().__init__()
        hidden = cin // 2
        self.cv1 = yolo_conv(cin, hidden)
        self.cv2 = yolo_conv(4 * hidden, cout)
        self.pool = nn.MaxPool2d(kernel, 1, kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = [self.cv1(x)]
        for _ in range(3):
            ys.append(self.pool(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class YoloC2f(nn.Module):
    """YOLOv8-style backbone (C2f + SPPF), FPN/PAN neck and decoupled head.

    Each scale's box and class maps are concatenated on channels, flattened to ``[B, no, H*W]`` with
    a batch-dependent ``view`` and concatenated over scales (the Ultralytics export layout).
    """

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64, 128, 256),
        depths: Sequence[int] = (1, 2, 2, 1),
        num_classes: int = 80,
        reg_max: int = 16,
    ) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = widths
        n2, n3, n4, n5 = depths
        self.stem = yolo_conv(3, c1, 3, 2)
        self.stage2 = nn.Sequential(yolo_conv(c1, c2, 3, 2), C2f(c2, c2, n2, shortcut=True))
        self.stage3 = nn.Sequential(yolo_conv(c2, c3, 3, 2), C2f(c3, c3, n3, shortcut=True))
        self.stage4 = nn.Sequential(yolo_conv(c3, c4, 3, 2), C2f(c4, c4, n4, shortcut=True))
        self.stage5 = nn.Sequential(yolo_conv(c4, c5, 3, 2), C2f(c5, c5, n5, shortcut=True), SPPF(c5, c5))
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.top4 = C2f(c5 + c4, c4, n5, use_split=True)
        self.top3 = C2f(c4 + c3, c3, n5, use_split=True)
        self.down3 = yolo_conv(c3, c3, 3, 2)
        self.bottom4 = C2f(c3 + c4, c4, n5, use_split=True)
        self.down4 = yolo_conv(c4, c4, 3, 2)
        self.bottom5 = C2f(c4 + c5, c5, n5, use_split=True)
        box_ch, cls_ch = max(16, c3 // 4, 4 * reg_max), max(c3, min(num_classes, 100))
        self.no = 4 * reg_max + num_classes

        def branch(cin: int, hidden: int, cout: int) -> nn.Module:
            return nn.Sequential(
                yolo_conv(cin, hidden, 3), yolo_conv(hidden, hidden, 3), nn.Conv2d(hidden, cout, 1)
            )

        self.box = nn.ModuleList(branch(c, box_ch, 4 * reg_max) for c in (c3, c4, c5))
        self.cls = nn.ModuleList(branch(c, cls_ch, num_classes) for c in (c3, c4, c5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.stage3(self.stage2(self.stem(x)))
        p4 = self.stage4(p3)
        p5 = self.stage5(p4)
        t4 = self.top4(torch.cat([self.up(p5), p4], 1))
        n3 = self.top3(torch.cat([self.up(t4), p3], 1))
        n4 = self.bottom4(torch.cat([self.down3(n3), t4], 1))
        n5 = self.bottom5(torch.cat([self.down4(n4), p5], 1))
        outs = []
        for feat, box, cls in zip((n3, n4, n5), self.box, self.cls, strict=True):
            y = torch.cat([box(feat), cls(feat)], 1)
            outs.append(y.view(y.shape[0], self.no, -1))
        return torch.cat(outs, 2)


def yolo_c2f(
    widths: Sequence[int] = (16, 32, 64, 128, 256),
    depths: Sequence[int] = (1, 2, 2, 1),
    num_classes: int = 80,
    reg_max: int = 16,
) -> nn.Module:
    """YOLOv8n widths and depths by default."""
    return YoloC2f(widths, depths, num_classes, reg_max)


# -------------------------------------------------------------------------------------- ConvNeXt


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of an NCHW tensor, done channels-last (Transpose, LN, Transpose)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, layer_scale: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


def convnext(
    dims: Sequence[int] = (96, 192, 384, 768), depths: Sequence[int] = (3, 3, 9, 3), num_classes: int = 1000
) -> nn.Module:
    """ConvNeXt-T by default: patchify stem, per stage (LN + 2x2 stride-2 conv) then blocks."""
    layers: list[nn.Module] = [nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6)]
    for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
        if i > 0:
            layers += [LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, 2)]
        layers += [ConvNeXtBlock(dim) for _ in range(depth)]
    return _ConvNeXt(nn.Sequential(*layers), dims[-1], num_classes)


class _ConvNeXt(nn.Module):
    def __init__(self, features: nn.Module, dim: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.features(x).mean((-2, -1))))


def small_cnn(width: int = 8, hidden: int = 32, num_classes: int = 10) -> nn.Module:
    """MNIST-size CNN for 1x28x28: two conv-BN-ReLU-maxpool stages, flatten, two Linear layers."""
    return nn.Sequential(
        ConvBNAct(1, width),
        nn.MaxPool2d(2),
        ConvBNAct(width, 2 * width),
        nn.MaxPool2d(2),
        nn.Flatten(1),
        nn.Linear(2 * width * 7 * 7, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )
