"""TRADES (Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy", ICML 2019).

Loss: CE(S(x), y) + beta * KL(p_S(x) || p_S(x_adv)), with x_adv maximising KL(p_S(x) || p_S(x')) by PGD-k from
x + 0.001 N(0, I), the student in eval mode while crafting (as the reference code does). The KL is summed over
classes and averaged over the batch, the scale of the reference code (``KLDivLoss(size_average=False) / B``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rkd.attacks import pgd
from rkd.config import TradesConfig
from rkd.distill.base import METHODS, DistillMethod, StepOutput
from rkd.distill.losses import kl_per_sample


@METHODS.register("trades")
class Trades(DistillMethod):
    """Teacher-free TRADES.

    Example:
        >>> method = Trades(student, beta=6.0)
        >>> out = method(x, y); out.loss.backward()
    """

    name = "trades"
    config_class = TradesConfig

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        was_training = self.student.training
        self.student.eval()
        try:
            with torch.no_grad():
                log_p_nat = F.log_softmax(self.attack_model(x).float(), dim=1)
            x_adv = pgd(
                self.attack_model, x, y, eps=self.eps, alpha=self.alpha, steps=self.steps, norm=self.norm,
                start="gaussian", loss=lambda logits, _y: kl_per_sample(log_p_nat, logits).sum(),
                generator=self.generator,
            ).x_adv
        finally:
            self.student.train(was_training)
        logits_nat = self.student(x)
        logits_adv = self.student(x_adv)
        ce = F.cross_entropy(logits_nat, y)
        robust = self.beta * kl_per_sample(F.log_softmax(logits_nat.float(), dim=1), logits_adv).mean()
        return StepOutput(
            loss=ce + robust, logits=logits_adv, parts={"ce_nat": ce.detach(), "kl_adv": robust.detach()}
        )
