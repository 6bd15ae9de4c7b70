"""ResNet-18 for 32x32 inputs (He et al. 2016).

The CIFAR variant of kuangliu/pytorch-cifar as used by ARD (Goldblum et al. 2020) and RSLAD (Zi et al. 2021):
3x3 stride-1 stem, no max-pool, four stages of BasicBlocks, global average pooling, ``linear`` head. Module
names match that code, so its plain state_dicts load into this ``net`` unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rkd.models.classifier import MODELS


def scaled(channels: int, width: float) -> int:
    """``round(channels * width)``, at least 1."""
    return max(1, int(round(channels * width)))


def add_stages(model: nn.Module, block: Any, widths: Sequence[int], num_blocks: Sequence[int]) -> None:
    """Set ``model.layer1`` .. ``layerN``: stage i holds ``num_blocks[i]`` blocks of ``widths[i]`` planes, the first
    with stride 1 in stage 1 and 2 after (He et al. 2016's CIFAR layout; kuangliu's ``_make_layer``)."""
    in_planes = widths[0]
    for i, (planes, count) in enumerate(zip(widths, num_blocks, strict=True)):
        layers = []
        for stride in [1 if i == 0 else 2] + [1] * (count - 1):
            layers.append(block(in_planes, planes, stride))
            in_planes = planes * block.expansion
        setattr(model, f"layer{i + 1}", nn.Sequential(*layers))


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
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        add_stages(self, BasicBlock, widths, num_blocks)  # layer1 (stride 1) .. layer4 (stride 2 each)
        self.linear = nn.Linear(widths[3] * BasicBlock.expansion, num_classes)

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
