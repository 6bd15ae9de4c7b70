"""PGD adversarial training (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks",
ICLR 2018): minimise CE(S(x_adv), y) with x_adv = PGD-k on CE(S(.), y) from a uniform random start."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rkd.attacks import pgd
from rkd.config import PgdAtConfig
from rkd.distill.base import METHODS, DistillMethod, StepOutput


@METHODS.register("pgd_at")
class PgdAt(DistillMethod):
    """Teacher-free PGD-AT; the student crafts its own x_adv in train mode (as the reference code does).

    Example:
        >>> method = PgdAt(student, eps=8/255, alpha=2/255, steps=10)
        >>> out = method(x, y); out.loss.backward()
    """

    name = "pgd_at"
    config_class = PgdAtConfig

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        x_adv = pgd(
            self.attack_model, x, y, eps=self.eps, alpha=self.alpha, steps=self.steps, norm=self.norm,
            start=self.start, generator=self.generator,
        ).x_adv
        logits = self.student(x_adv)
        loss = F.cross_entropy(logits, y)
        return StepOutput(loss=loss, logits=logits, parts={"ce_adv": loss.detach()})
