"""The predicted class of a row of logits, with non-finite logits counted as no prediction.

``argmax`` over a row with a NaN returns the NaN's column (an all-NaN row gives class 0), so an engine that
returns NaN under attack would count as correct on every sample of that class. Every robustness decision in rkd
(the suite, the AutoAttack adapter, transfer, ``rkd quantize``'s check) reads the class through
:func:`predicted_class`, which gives ``-1`` (never a label) for a row with any NaN or infinity.
"""

from __future__ import annotations

import torch

NO_CLASS = -1


def predicted_class(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(1)``, with :data:`NO_CLASS` where a row has a non-finite value."""
    pred = logits.argmax(1)
    finite = torch.isfinite(logits).all(1)
    return torch.where(finite, pred, torch.full_like(pred, NO_CLASS))
