"""Pre-activation ResNet-18 for 32x32 inputs (He et al. 2016, "Identity Mappings in Deep Residual Networks").

The PreActResNet18 of the fast adversarial training code (Wong et al. 2020) and of Rice et al. 2020
("Overfitting in adversarially robust deep learning"); module names match that code so its plain state_dicts
load into this ``net`` unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rkd.models.classifier import MODELS
from rkd.models.resnet import add_stages, scaled


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice; a 1x1 conv ``shortcut`` (no BN) only when the shape changes."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """PreActResNet, width multiplier on the base widths 64/128/256/512; final ``bn`` then ``linear``."""

    def __init__(self, num_blocks: tuple[int, ...], num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        widths = [scaled(c, width) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        add_stages(self, PreActBlock, widths, num_blocks)  # layer1 (stride 1) .. layer4 (stride 2 each)
        self.bn = nn.BatchNorm2d(widths[3] * PreActBlock.expansion)
        self.linear = nn.Linear(widths[3] * PreActBlock.expansion, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        # Global average pooling: identical to the original avg_pool2d(out, 4) on 32x32 inputs.
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.linear(out)


@MODELS.register("preact_resnet18")
def preact_resnet18(num_classes: int = 10, width: float = 1.0) -> PreActResNet:
    """PreActResNet-18 (He et al. 2016; the fast-AT code of Wong et al. 2020 and Rice et al. 2020)."""
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, width=width)
