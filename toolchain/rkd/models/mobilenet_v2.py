"""MobileNetV2 for 32x32 inputs (Sandler et al. 2018).

The CIFAR variant of kuangliu/pytorch-cifar used as the student in RSLAD (Zi et al. 2021): 3x3 stride-1 stem
to 32 channels, the second stage at stride 1, 1x1 conv to 1280, global average pooling, ``linear`` head.
Module names match that code. The width multiplier follows torchvision: every channel count becomes
``_make_divisible(c * width, 8)`` and the final 1280 is only ever widened (``1280 * max(1, width)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rkd.models.classifier import MODELS

#: (expansion, out_planes, num_blocks, stride), kuangliu's CIFAR configuration.
CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 -> 1 for CIFAR
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` without dropping more than 10% (torchvision)."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class Block(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 linear projection (kuangliu's Block).

    The residual is added at stride 1 only; a 1x1 conv + BN ``shortcut`` projects it when channels change.
    """

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        planes = expansion * in_planes
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, kernel_size=3, stride=stride, padding=1, groups=planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=1, padding=0, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2(nn.Module):
    """kuangliu/pytorch-cifar MobileNetV2 with a torchvision-style width multiplier."""

    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        stem = _make_divisible(32 * width)
        last = _make_divisible(1280 * max(1.0, width))
        self.conv1 = nn.Conv2d(3, stem, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        layers: list[nn.Module] = []
        in_planes = stem
        for expansion, out_planes, num_blocks, stride in CFG:
            out_planes = _make_divisible(out_planes * width)
            for s in [stride] + [1] * (num_blocks - 1):
                layers.append(Block(in_planes, out_planes, expansion, s))
                in_planes = out_planes
        self.layers = nn.Sequential(*layers)
        self.conv2 = nn.Conv2d(in_planes, last, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(last)
        self.linear = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.relu(self.bn2(self.conv2(out)))
        # Global average pooling: identical to kuangliu's avg_pool2d(out, 4) on 32x32 inputs.
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.linear(out)


@MODELS.register("mobilenet_v2")
def mobilenet_v2(num_classes: int = 10, width: float = 1.0) -> MobileNetV2:
    """MobileNetV2, CIFAR variant (Sandler et al. 2018; kuangliu/pytorch-cifar as used by RSLAD).

    2,296,922 parameters at width 1.0 and 10 classes.
    """
    return MobileNetV2(num_classes=num_classes, width=width)
