"""The KL terms of robust distillation, and their scale, in one place (METHOD.md, "Loss scale matters").

The published code of ARD (``nn.KLDivLoss()``, elementwise mean) and RSLAD (``torch.mean`` of the elementwise
KL) divides the per-sample KL by the number of classes C; RSLAD multiplies by 10 on CIFAR-100 to keep the
CIFAR-10 scale. :data:`RSLAD_KL_SCALE` is that scale: the per-sample KL (summed over classes) divided by 10,
averaged over the batch, on every data set. ARD keeps its own 1/C (:func:`ard_kl_scale`); TRADES sums over
classes and averages over the batch (scale 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

RSLAD_KL_SCALE = 0.1  # sum_c KL / 10 per sample: RSLAD's (and adv_path's) scale on CIFAR-10 and CIFAR-100


def ard_kl_scale(num_classes: int) -> float:
    """ARD's scale: ``nn.KLDivLoss()`` averages over the B x C elements, i.e. sum_c KL / C per sample."""
    return 1.0 / num_classes


def kl_per_sample(target_log_probs: torch.Tensor, student_logits: torch.Tensor,
                  temperature: float = 1.0) -> torch.Tensor:
    """KL(P || Q) per sample, summed over classes, in float32.

    Args:
        target_log_probs: log P (e.g. ``log_softmax(teacher_logits / tau)``), (B, C); gradients flow if it has any.
        student_logits: logits of Q before the temperature, (B, C).
        temperature: Q = softmax(student_logits / temperature).
    """
    log_q = F.log_softmax(student_logits.float() / temperature, dim=1)
    p_log = target_log_probs.float()
    return (p_log.exp() * (p_log - log_q)).sum(dim=1)


def soft_targets(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log-softmax of ``logits / temperature`` in float32 (the teacher side of a KL)."""
    return F.log_softmax(logits.float() / temperature, dim=1)
