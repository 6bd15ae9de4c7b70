"""Small models and data for tests (yours and rkd's), in the spirit of ``torchao.testing``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# The smallest useful size of every registered architecture (tests parametrise over the registry with these).
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "resnet18": {"width": 0.125},
    "preact_resnet18": {"width": 0.125},
    "mobilenet_v2": {"width": 0.25},
    "wide_resnet": {"depth": 10, "widen_factor": 1},
    "tiny_cnn": {"width": 0.5},
    "tv_mobilenet_v2": {"width": 0.25},
    "tv_resnet18": {"width": 0.125},
    "tv_resnet50": {"width": 0.0625},
    "tv_wide_resnet50_2": {"width": 0.0625},
}


def train_tiny_classifier(steps: int = 80, *, seed: int = 0) -> nn.Module:
    """``tiny_cnn`` fitted with a few Adam steps on the synthetic problem (clear decisions, not near-ties)."""
    from rkd.data import load_dataset
    from rkd.models import create_model

    torch.manual_seed(seed)
    data = load_dataset("synthetic", "train", n=512)
    model = create_model("tiny_cnn", width=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = data.to_float(), data.y
    for step in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=torch.Generator().manual_seed(seed + step))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
