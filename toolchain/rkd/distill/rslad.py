"""RSLAD (Zi et al., "Revisiting Adversarial Robustness Distillation: Robust Soft Labels Make Student Better",
ICCV 2021).

x_adv maximises KL(p_T(x) || p_S(x')) by PGD-k from x + 0.001 N(0, I), the student in eval mode while
crafting; the loss is

    (1 - lambda_nat) * KL(p_T(x) || p_S(x_adv)) * 0.1 + lambda_nat * KL(p_T(x) || p_S(x)) * 0.1,

each KL summed over classes per sample and averaged over the batch, at temperature 1. The factor 0.1 is
:data:`rkd.distill.losses.RSLAD_KL_SCALE`: the published code takes ``torch.mean`` of the elementwise KL (sum
over classes / C) and multiplies it by 10 on CIFAR-100, i.e. sum_c KL / 10 per sample on both data sets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from rkd.attacks import pgd
from rkd.config import RsladConfig
from rkd.distill.ard import grad_if
from rkd.distill.base import METHODS, DistillMethod, StepOutput
from rkd.distill.losses import RSLAD_KL_SCALE, kl_per_sample, soft_targets


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode for the block and restore its previous mode afterwards, also on errors."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def rslad_kl(weight: float, target_log_probs: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """``weight * RSLAD_KL_SCALE * mean_i KL(P_i || softmax(student_logits_i))`` (temperature 1)."""
    return weight * RSLAD_KL_SCALE * kl_per_sample(target_log_probs, student_logits).mean()


@METHODS.register("rslad")
class Rslad(DistillMethod):
    """RSLAD: the teacher's clean soft labels supervise the student on both x and x_adv.

    :meth:`craft` and :meth:`loss_on` are public so other code can evaluate RSLAD's loss on its own x_adv.

    Example:
        >>> method = Rslad(student, teacher, lambda_nat=1 / 6)
        >>> out = method(x, y); out.loss.backward()
        >>> out = method.loss_on(x, y, x_adv)  # RSLAD's loss on a given x_adv
    """

    name = "rslad"
    config_class = RsladConfig
    needs_teacher = True

    def craft(
        self, x: torch.Tensor, y: torch.Tensor, *, teacher_log_probs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x_adv maximising KL(p_T(x) || p_S(x')) by PGD-k from x + 0.001 N, the student in eval mode.

        Args:
            x: clean images in [0, 1].
            y: labels (only their count is used).
            teacher_log_probs: log p_T(x), when the caller already has it (saves a teacher forward).
        """
        target = soft_targets(self.teacher_logits(x)) if teacher_log_probs is None else teacher_log_probs
        with eval_mode(self.student):
            return pgd(
                self.attack_model, x, y, eps=self.eps, alpha=self.alpha, steps=self.steps, norm=self.norm,
                start="gaussian", loss=lambda logits, _y: kl_per_sample(target, logits),
                generator=self.generator,
            ).x_adv

    def loss_on(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        x_adv: torch.Tensor,
        *,
        teacher_log_probs: torch.Tensor | None = None,
    ) -> StepOutput:
        """RSLAD's loss at a given ``x_adv``, the student in its current mode (train mode in training).

        Args:
            x: clean images in [0, 1].
            y: labels (unused by the loss; kept for the common signature).
            x_adv: the adversarial images.
            teacher_log_probs: log p_T(x), when the caller already has it.
        """
        target = soft_targets(self.teacher_logits(x)) if teacher_log_probs is None else teacher_log_probs
        w_adv, w_nat = 1.0 - self.lambda_nat, self.lambda_nat
        with grad_if(w_adv):
            logits_adv = self.student(x_adv)
            kd_adv = rslad_kl(w_adv, target, logits_adv)
        with grad_if(w_nat):
            kd_nat = rslad_kl(w_nat, target, self.student(x))
        parts = {"kd_adv": kd_adv.detach(), "kd_nat": kd_nat.detach()}
        return StepOutput(loss=kd_adv + kd_nat, logits=logits_adv, parts=parts)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        target = soft_targets(self.teacher_logits(x))
        x_adv = self.craft(x, y, teacher_log_probs=target)
        return self.loss_on(x, y, x_adv, teacher_log_probs=target)
