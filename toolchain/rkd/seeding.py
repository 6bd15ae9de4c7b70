"""Deterministic seeding for training and evaluation runs."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally ask torch for deterministic kernels.

    ``deterministic=True`` sets ``torch.use_deterministic_algorithms(True, warn_only=True)`` and disables cuDNN
    benchmarking: bit-reproducible runs on one machine at some cost in speed.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator on ``device`` seeded with ``seed`` (attacks and augmentation draw from it)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen
