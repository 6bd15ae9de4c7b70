"""Optimizer and learning-rate schedule (SGD with multistep or cosine decay, optional linear warm-up).

The rate is a pure function of the global step, so a resumed run continues the exact schedule.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rkd.config import TrainConfig


def build_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay (the robust-training literature's optimizer)."""
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
    )


def lr_at(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Learning rate at global ``step`` (0-based) for the configured schedule."""
    epoch = step / max(1, steps_per_epoch)
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return cfg.lr * (step + 1) / (cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "multistep":
        passed = sum(1 for m in cfg.resolved_milestones() if epoch >= m)
        return cfg.lr * cfg.gamma**passed
    total = max(1e-9, cfg.epochs - cfg.warmup_epochs)
    t = min(1.0, (epoch - cfg.warmup_epochs) / total)
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
