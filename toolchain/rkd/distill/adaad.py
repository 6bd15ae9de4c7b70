"""AdaAD (Huang et al., "Boosting Accuracy and Robustness of Student Models via Adaptive Adversarial
Distillation", CVPR 2023).

x_adv maximises KL(p_T(x') || p_S(x')) by PGD-k from x + 0.001 N(0, I), with the teacher re-evaluated at every
iterate x' (the input gradient flows through teacher and student), the student in eval mode while crafting;
the loss is

    a * KL(p_T(x_adv) || p_S(x_adv)) * 0.1 + (1 - a) * KL(p_T(x) || p_S(x)) * 0.1,

each KL summed over classes per sample and averaged over the batch, at temperature 1.

Scale: rkd puts both terms on RSLAD's scale (:data:`rkd.distill.losses.RSLAD_KL_SCALE`, sum_c KL / 10 per
sample, batch mean) on every data set, so AdaAD, RSLAD and adv_path compare under the same optimizer settings
(METHOD.md, "Loss scale matters"). The published code (``boyellow/AdaAD``, ``main.py``) uses
``nn.KLDivLoss()`` (elementwise mean: sum_c KL / 10 per sample, the same scale) on CIFAR-10, and the
class-summed KL divided by the batch size (scale 1, 10 times this one) on CIFAR-100.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rkd.attacks import pgd
from rkd.config import AdaadConfig
from rkd.distill.ard import grad_if
from rkd.distill.base import METHODS, DistillMethod, StepOutput
from rkd.distill.losses import kl_per_sample, soft_targets
from rkd.distill.rslad import eval_mode, rslad_kl


@METHODS.register("adaad")
class Adaad(DistillMethod):
    """AdaAD: the inner maximisation finds where teacher and student disagree most, and the student is
    aligned with the teacher there.

    Example:
        >>> method = Adaad(student, teacher, kd_weight=1.0)
        >>> out = method(x, y); out.loss.backward()
    """

    name = "adaad"
    config_class = AdaadConfig
    needs_teacher = True

    def _teacher_with_input_grad(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher logits (float32) keeping the graph to ``x`` (the autocast policy of ``teacher_logits``)."""
        assert self.teacher is not None
        if x.is_cuda:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.teacher(x).float()
        return self.teacher(x).float()

    def discrepancy(self, x: torch.Tensor) -> torch.Tensor:
        """KL(p_T(x) || p_S(x)) per sample, both models evaluated at ``x`` (the inner objective)."""
        return kl_per_sample(F.log_softmax(self._teacher_with_input_grad(x), dim=1), self.attack_model(x))

    def craft(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x_adv maximising KL(p_T(x') || p_S(x')) by PGD-k from x + 0.001 N, the student in eval mode."""
        with eval_mode(self.student):
            return pgd(
                self.attack_model, x, y, eps=self.eps, alpha=self.alpha, steps=self.steps, norm=self.norm,
                start="gaussian", step_fn=self.discrepancy, generator=self.generator,
            ).x_adv

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        x_adv = self.craft(x, y)
        w_adv, w_nat = self.kd_weight, 1.0 - self.kd_weight
        with grad_if(w_adv):
            logits_adv = self.student(x_adv)
            kd_adv = rslad_kl(w_adv, soft_targets(self.teacher_logits(x_adv)), logits_adv)
        with grad_if(w_nat):
            kd_nat = rslad_kl(w_nat, soft_targets(self.teacher_logits(x)), self.student(x))
        parts = {"kd_adv": kd_adv.detach(), "kd_nat": kd_nat.detach()}
        return StepOutput(loss=kd_adv + kd_nat, logits=logits_adv, parts=parts)
