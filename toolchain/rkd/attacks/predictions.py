"""The predicted class of a row of logits, with non-finite logits counted as no prediction.

``argmax`` over a row with a NaN returns the NaN's column (an all-NaN row gives class 0), so an engine that
returns NaN under attack would count as correct on every sample of that class. Every robustness decision in rkd
(the suite, the AutoAttack adapter, transfer, ``rkd quantize``'s check) reads the class through
:func:`predicted_class`, which gives ``-1`` (never a label) for a row with any NaN or infinity.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

NO_CLASS = -1


def predicted_class(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(1)``, with :data:`NO_CLASS` where a row has a non-finite value."""
    pred = logits.argmax(1)
    finite = torch.isfinite(logits).all(1)
    return torch.where(finite, pred, torch.full_like(pred, NO_CLASS))


def batched_logits(model: Any, x: torch.Tensor, batch_size: int,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """``model``'s float32 logits on ``x`` (kept where it is, moved per batch to ``device``, default: the model's
    first parameter's device), without gradients, gathered on the CPU. ``model`` is a module or a runtime."""
    if device is None:
        param = next(model.parameters(), None) if isinstance(model, nn.Module) else None
        device = param.device if param is not None else torch.device("cpu")
    with torch.no_grad():
        parts = [model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, 0)


def batched_classes(model: Any, x: torch.Tensor, batch_size: int,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """:func:`predicted_class` of :func:`batched_logits` (int64, CPU; empty for empty ``x``)."""
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.long)
    return predicted_class(batched_logits(model, x, batch_size, device))


def logit_agreement(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, Any]:
    """How far two models' logits on the same inputs are apart: ``{"n", "top1_agreement", "top1_disagreements",
    "max_abs_diff", "mean_abs_diff"}`` (the record of export parity, quantize's surrogate check and verify)."""
    ours, theirs = ours.float().cpu(), theirs.float().cpu()
    agree = ours.argmax(1) == theirs.argmax(1)
    diff = (ours - theirs).abs()
    return {"n": len(ours), "top1_agreement": float(agree.float().mean()), "top1_disagreements": int((~agree).sum()),
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}
