"""ResNet-18 for 32x32 inputs (He et al. 2016).

The CIFAR variant of kuangliu/pytorch-cifar as used by ARD (Goldblum et al. 2020) and RSLAD (Zi et al. 2021):
3x3 stride-1 stem, no max-pool, four stages of BasicBlocks, global average pooling, ``linear`` head. Module
names match that code, so its plain state_dicts load into this ``net`` unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rkd.models.classifier import MODELS


def scaled(channels: int, width: float) -> int:
    """``round(channels * width)``, at least 1."""
    return max(1, int(round(channels * width)))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a projection ``shortcut`` when the shape changes (kuangliu's BasicBlock)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(self.expansion * planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """kuangliu/pytorch-cifar ResNet with a width multiplier on the base widths 64/128/256/512."""

    def __init__(self, num_blocks: tuple[int, ...], num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        widths = [scaled(c, width) for c in (64, 128, 256, 512)]
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._make_layer(widths[0], num_blocks[0], stride=1)
        self.layer2 = self._make_layer(widths[1], num_blocks[1], stride=2)
        self.layer3 = self._make_layer(widths[2], num_blocks[2], stride=2)
        self.layer4 = self._make_layer(widths[3], num_blocks[3], stride=2)
        self.linear = nn.Linear(widths[3] * BasicBlock.expansion, num_classes)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes * BasicBlock.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        # Global average pooling: identical to kuangliu's avg_pool2d(out, 4) on 32x32 inputs.
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.linear(out)


@MODELS.register("resnet18")
def resnet18(num_classes: int = 10, width: float = 1.0) -> ResNet:
    """ResNet-18, CIFAR variant (He et al. 2016; kuangliu/pytorch-cifar as used by ARD and RSLAD).

    11,173,962 parameters at width 1.0 and 10 classes.
    """
    return ResNet((2, 2, 2, 2), num_classes=num_classes, width=width)
