"""Choosing and fingerprinting subsets: evaluation samples, held-out splits.

``indices_sha256`` records exactly which test samples an evaluation used, so two reports can be checked to
have measured the same images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from rkd.data.arrays import ImageArrays
from rkd.data.seeds import derive_seed
from rkd.errors import UsageError
from rkd.registry import did_you_mean

SELECT_MODES: tuple[str, ...] = ("first", "random")


def select_indices(n_total: int, n: int | None, *, seed: int = 0, mode: str = "first") -> torch.Tensor:
    """Positions of ``n`` of ``n_total`` samples (all when ``n`` is None), as a sorted int64 CPU tensor.

    Modes: ``"first"`` takes ``0..n-1``; ``"random"`` takes a seeded uniform random subset, sorted.

    Raises:
        UsageError: ``n`` negative or larger than ``n_total``, or an unknown mode.
    """
    if mode not in SELECT_MODES:
        raise UsageError(
            f"unknown selection mode '{mode}'{did_you_mean(mode, SELECT_MODES)}; choose first or random"
        )
    if n is None:
        n = n_total
    if n < 0:
        raise UsageError(f"cannot select {n} samples")
    if n > n_total:
        raise UsageError(f"asked for {n} samples but only {n_total} exist")
    if mode == "first" or n == n_total:
        return torch.arange(n, dtype=torch.int64)
    g = torch.Generator().manual_seed(derive_seed("select-indices", seed))
    return torch.randperm(n_total, generator=g)[:n].sort().values


def indices_sha256(indices: torch.Tensor | np.ndarray | Sequence[int]) -> str:
    """Hex sha256 of ``indices`` as int64 little-endian bytes, in the given order."""
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    arr = np.asarray(indices).astype("<i8", copy=False).reshape(-1)
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def samples_sha256(x: torch.Tensor, y: torch.Tensor) -> str:
    """Hex sha256 of a batch's shape, float32 pixels and int64 labels: which images, not only which indices."""
    h = hashlib.sha256(str(tuple(x.shape)).encode())
    h.update(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    h.update(y.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def split_holdout(data: ImageArrays, n_holdout: int, seed: int) -> tuple[ImageArrays, ImageArrays]:
    """Split a training set into ``(train, held_out)``: ``n_holdout`` seeded random rows held out, disjoint,
    each part in the original row order (for periodic evaluation during training)."""
    if not 0 < n_holdout < len(data):
        raise UsageError(
            f"the held-out set (data.holdout) must be 0 (none) or in [1, {len(data) - 1}] for {len(data)} "
            f"training samples, got {n_holdout}"
        )
    g = torch.Generator().manual_seed(derive_seed("split-holdout", seed))
    perm = torch.randperm(len(data), generator=g)
    held = perm[:n_holdout].sort().values
    kept = perm[n_holdout:].sort().values
    return data.subset(kept), data.subset(held)
