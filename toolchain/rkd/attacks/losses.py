"""Attack objectives: cross-entropy and the Carlini-Wagner margin (Carlini & Wagner 2017)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from rkd.errors import UsageError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def cw_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample CW margin ``max_{j != y} z_j - z_y`` (Carlini & Wagner 2017, "Towards Evaluating the
    Robustness of Neural Networks", the f_6 objective without its confidence clamp).

    Positive when another class scores higher than the true one (the sample is misclassified). Computed in
    at least float32 (safe under autocast).

    Args:
        logits: (N, C) logits.
        y: (N,) class indices.

    Returns:
        (N,) margins (float32, or float64 for float64 logits).
    """
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise UsageError(f"cw_margin needs logits shaped (N, C) with C >= 2; got {tuple(logits.shape)}")
    z = _at_least_float32(logits)
    true = z.gather(1, y.long().unsqueeze(1)).squeeze(1)
    mask = F.one_hot(y.long(), z.shape[1]).bool()
    other = z.masked_fill(mask, float("-inf")).amax(dim=1)
    return other - true


def _ce_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # Summed, not averaged: a sample's gradient must not depend on the batch size.
    return F.cross_entropy(_at_least_float32(logits), y, reduction="sum")


def _cw_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return cw_margin(logits, y).sum()


def resolve_loss(loss: str | LossFn) -> tuple[LossFn, bool]:
    """The loss function for ``loss`` ("ce", "cw" or a callable) and whether it is built in (needs labels)."""
    if callable(loss):
        return loss, False
    if isinstance(loss, str) and loss.lower() == "ce":
        return _ce_sum, True
    if isinstance(loss, str) and loss.lower() == "cw":
        return _cw_sum, True
    raise UsageError(f"loss must be 'ce', 'cw' or a callable loss(logits, y); got {loss!r}")
