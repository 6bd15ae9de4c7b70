"""``tiny_cnn``: a two-convolution network without batch norm, for tests and smoke runs.

Without batch norm its outputs do not depend on how a batch is split, which is what a data-parallel test
compares (one process vs several on the same global batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rkd.models.classifier import MODELS


class TinyCNN(nn.Module):
    """conv 3x3 -> ReLU -> max-pool -> conv 3x3 -> ReLU -> global average pool -> linear."""

    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        c1, c2 = max(1, round(16 * width)), max(1, round(32 * width))
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.linear = nn.Linear(c2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(F.relu(self.conv1(x)), 2)
        out = F.relu(self.conv2(out))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@MODELS.register("tiny_cnn")
def tiny_cnn(num_classes: int = 10, width: float = 1.0) -> TinyCNN:
    """A tiny CNN without batch norm (tests, smoke runs)."""
    return TinyCNN(num_classes=num_classes, width=width)
