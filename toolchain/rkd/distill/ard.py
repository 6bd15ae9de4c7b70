"""ARD (Goldblum et al., "Adversarially Robust Distillation", AAAI 2020).

Loss: a * tau^2 * KL(p_T(x)/tau || p_S(x_adv)/tau) * (1/C) + (1 - a) * CE(S(x), y), with x_adv = PGD-k on
CE(S(.), y) from a uniform random start; the teacher sees the clean x.

Scale: the published code computes the KL with ``nn.KLDivLoss()`` (elementwise mean over the B x C entries),
i.e. the per-sample KL summed over classes, divided by the number of classes C, averaged over the batch;
:func:`rkd.distill.losses.ard_kl_scale` is that 1/C, taken from the logits' width.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from rkd.attacks import pgd
from rkd.config import ArdConfig
from rkd.distill.base import METHODS, DistillMethod, StepOutput
from rkd.distill.losses import ard_kl_scale, kl_per_sample, soft_targets


def grad_if(weight: float) -> contextlib.AbstractContextManager[Any]:
    """``torch.no_grad()`` for a term whose weight is 0 (its forward still runs, e.g. for batch-norm
    statistics and the reported part, but no backward is paid for it); a no-op context otherwise."""
    return torch.no_grad() if weight == 0 else contextlib.nullcontext()


@dataclass
class ArdTerms:
    """The pieces of one ARD step (IAD builds on them).

    Attributes:
        x_adv: the adversarial input crafted on the student.
        logits_adv: student logits at ``x_adv``.
        logits_nat: student logits at the clean ``x``.
        kd: the weighted distillation term ``a tau^2 KL(...) / C``.
        ce: the weighted clean term ``(1 - a) CE(S(x), y)``.
    """

    x_adv: torch.Tensor
    logits_adv: torch.Tensor
    logits_nat: torch.Tensor
    kd: torch.Tensor
    ce: torch.Tensor


@METHODS.register("ard")
class Ard(DistillMethod):
    """ARD: distil the teacher's clean soft labels into the student's adversarial outputs.

    The student crafts x_adv in the mode the loop put it in (train mode during training, batch-norm statistics
    updated by the attack's forwards, as ARD's code does); it is never switched to eval mode here.

    Example:
        >>> method = Ard(student, teacher, temperature=30.0, kd_weight=1.0)
        >>> out = method(x, y); out.loss.backward()
    """

    name = "ard"
    config_class = ArdConfig
    needs_teacher = True

    def craft(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x_adv = PGD-k on CE(S(.), y) from a uniform random start, on the student in its current mode."""
        return pgd(
            self.attack_model, x, y, eps=self.eps, alpha=self.alpha, steps=self.steps, norm=self.norm,
            start="random", loss="ce", generator=self.generator,
        ).x_adv

    def ard_terms(self, x: torch.Tensor, y: torch.Tensor, *, nat_grad: bool = False) -> ArdTerms:
        """Craft x_adv and compute ARD's two weighted terms.

        Args:
            x: clean images in [0, 1].
            y: labels.
            nat_grad: keep the graph of the clean logits even when the CE weight is 0 (IAD needs them).
        """
        a, tau = self.kd_weight, self.temperature
        target = soft_targets(self.teacher_logits(x), tau)
        x_adv = self.craft(x, y)
        with grad_if(a):
            logits_adv = self.student(x_adv)
            scale = ard_kl_scale(logits_adv.shape[1])
            kd = a * tau * tau * scale * kl_per_sample(target, logits_adv, tau).mean()
        with grad_if(1.0 if nat_grad else 1.0 - a):
            logits_nat = self.student(x)
        ce = (1.0 - a) * F.cross_entropy(logits_nat.float(), y)
        return ArdTerms(x_adv=x_adv, logits_adv=logits_adv, logits_nat=logits_nat, kd=kd, ce=ce)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        t = self.ard_terms(x, y)
        return StepOutput(
            loss=t.kd + t.ce, logits=t.logits_adv, parts={"kd": t.kd.detach(), "ce": t.ce.detach()}
        )
