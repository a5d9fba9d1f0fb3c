"""Plain-PyTorch definitions of the zoo architectures.

Every builder's defaults give the published full-size network (for benchmarks); ``export_zoo.TINY``
passes narrow configs for the small committed test files. No torchvision or timm: they pull a
CUDA build of torch, and writing the layers out keeps visible which torch idiom makes which ONNX
pattern (``torch.chunk`` -> Split, ``Linear`` on 4-D -> MatMul+Add, hand-written attention reshapes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = [
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
        self.downsample = ConvBNAct(cin, planes, 1, stride, act=None) if stride != 1 or cin != planes else None
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
            transition = [nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels // 2, 1, bias=False)]
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
        self.ups = nn.ModuleList(nn.ConvTranspose2d(chans[i + 1], chans[i], 2, 2) for i in reversed(range(depth)))
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

    def __init__(self, cin: int, cout: int, n: int = 1, shortcut: bool = False, use_split: bool = False) -> None:
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
            return nn.Sequential(yolo_conv(cin, hidden, 3), yolo_conv(hidden, hidden, 3), nn.Conv2d(hidden, cout, 1))

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


# --------------------------------------------------------------------------------- Transformers


class Attention(nn.Module):
    """Fused-qkv multi-head self-attention, timm style: reshape to [B, N, 3, heads, hd] and permute."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(
        self, image_size: int, patch: int, dim: int, depth: int, heads: int, mlp_ratio: int, num_classes: int
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def vit(
    image_size: int = 224,
    patch: int = 16,
    dim: int = 768,
    depth: int = 12,
    heads: int = 12,
    mlp_ratio: int = 4,
    num_classes: int = 1000,
) -> nn.Module:
    """ViT-B/16 by default; pre-norm blocks, class token, learned position embedding."""
    return ViT(image_size, patch, dim, depth, heads, mlp_ratio, num_classes)


class BertLayer(nn.Module):
    """Post-norm encoder layer with separate q/k/v projections, as in Hugging Face's BertLayer."""

    def __init__(self, hidden: int, heads: int, intermediate: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.act = nn.GELU()
        self.output = nn.Linear(intermediate, hidden)
        self.out_norm = nn.LayerNorm(hidden, eps=1e-12)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        probs = (q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)).softmax(-1)
        ctx = (probs @ v).transpose(1, 2).reshape(x.shape)
        x = self.attn_norm(x + self.attn_out(ctx))
        return self.out_norm(x + self.output(self.act(self.intermediate(x))))


class Bert(nn.Module):
    def __init__(self, vocab: int, hidden: int, layers: int, heads: int, intermediate: int, max_positions: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.register_buffer("position_ids", torch.arange(max_positions).unsqueeze(0), persistent=False)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.Sequential(*(BertLayer(hidden, heads, intermediate) for _ in range(layers)))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = self.position_ids[:, : input_ids.shape[1]]
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return self.layers(self.norm(x))


def bert(
    vocab: int = 30522,
    hidden: int = 768,
    layers: int = 12,
    heads: int = 12,
    intermediate: int = 3072,
    max_positions: int = 512,
) -> nn.Module:
    """BERT-base encoder by default (no token-type embeddings, no pooler); output is [B, S, hidden]."""
    return Bert(vocab, hidden, layers, heads, intermediate, max_positions)


# ------------------------------------------------------------------------------------ small ones


class LSTMModel(nn.Module):
    def __init__(self, input_size: int, hidden: int, layers: int, num_classes: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def lstm_model(input_size: int = 64, hidden: int = 512, layers: int = 2, num_classes: int = 10) -> nn.Module:
    """Batch-first stacked LSTM over [B, S, input_size]; Linear head on the last time step."""
    return LSTMModel(input_size, hidden, layers, num_classes)


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
