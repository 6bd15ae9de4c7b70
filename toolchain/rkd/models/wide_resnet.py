"""Wide residual network for 32x32 inputs (Zagoruyko & Komodakis 2016).

The WideResNet of the TRADES code (Zhang et al. 2019), also the teacher of ARD and RSLAD; WRN-34-10 by
default.
Module names match that code (``block1..3`` of ``NetworkBlock`` with ``.layer``, ``convShortcut``, ``bn1``,
``fc``). TRADES also builds a ``sub_block1`` that its forward never uses; it is left out here, and
:func:`rkd.models.load_foreign_checkpoint` drops its keys. Dropout (``dropRate``, 0 in TRADES) is omitted.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rkd.errors import UsageError
from rkd.models.classifier import MODELS


class BasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3 twice, 1x1 ``convShortcut`` when channels change (TRADES)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.equalInOut = in_planes == out_planes
        self.convShortcut: nn.Conv2d | None = None
        if not self.equalInOut:
            self.convShortcut = nn.Conv2d(
                in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.convShortcut is None:
            out = self.relu1(self.bn1(x))
            out = self.conv2(self.relu2(self.bn2(self.conv1(out))))
            return x + out
        # Channels change: the shortcut also sees the pre-activated input, as in TRADES.
        x = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(x))))
        return self.convShortcut(x) + out


class NetworkBlock(nn.Module):
    """``nb_layers`` BasicBlocks; the first one carries the stride and the channel change."""

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                for i in range(nb_layers)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen_factor, TRADES layout and initialisation."""

    def __init__(self, depth: int = 34, num_classes: int = 10, widen_factor: int = 10) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise UsageError(
                f"wide_resnet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 34, ...), got {depth}"
            )
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(channels[3], num_classes)
        self.nChannels = channels[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        # Global average pooling: identical to TRADES' avg_pool2d(out, 8) on 32x32 inputs.
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(out)


@MODELS.register("wide_resnet")
def wide_resnet(num_classes: int = 10, depth: int = 34, widen_factor: int = 10) -> WideResNet:
    """WideResNet-depth-widen_factor (Zagoruyko & Komodakis 2016; the TRADES code, Zhang et al. 2019).

    WRN-34-10 (the default) has 46,160,474 parameters for 10 classes.
    """
    return WideResNet(depth=depth, num_classes=num_classes, widen_factor=widen_factor)
