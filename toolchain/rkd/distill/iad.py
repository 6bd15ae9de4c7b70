"""IAD (Zhu et al., "Reliable Adversarial Distillation with Unreliable Teachers", ICLR 2022), the ARD-based
variant (IAD-I), as METHOD.md states it.

Epochs 0..warmup_epochs-1 (0-based ``self.epoch``): exactly ARD's loss (:class:`rkd.distill.ard.Ard`). From
epoch ``warmup_epochs`` on it adds the student's self-introspection term

    a * mean_i[(1 - A_i) * KL(p_S(x_i) || p_S(x_adv_i))] * (1/C),    A_i = p_T(x_adv_i)_{y_i} ** beta,

where A (the teacher's reliability on the adversarial input) carries no gradient, the KL is summed over
classes at temperature 1, and gradients flow through both p_S(x) and p_S(x_adv) (as in the published IAD-I
script).

Scale (chosen): both KL terms use ARD's 1/C (:func:`rkd.distill.losses.ard_kl_scale`), so the warm-up is ARD
to the number and the self term keeps the relative weight it has in the published code. The published IAD-I
script (``ZFancy/IAD``, ``IAD-I.py``) sums both KL terms over classes and divides by the batch (scale 1,
i.e. C times this one, with the same ratio between the terms): under SGD that is a C-fold larger step on the
KL terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rkd.config import IadConfig
from rkd.distill.ard import Ard
from rkd.distill.base import METHODS, StepOutput
from rkd.distill.losses import ard_kl_scale, kl_per_sample


@METHODS.register("iad")
class Iad(Ard):
    """IAD-I: ARD, then an introspection term weighted by the teacher's unreliability 1 - A.

    Example:
        >>> method = Iad(student, teacher, warmup_epochs=60, beta=0.1)
        >>> method.set_epoch(60)
        >>> out = method(x, y); out.parts["self_kl"]
    """

    name = "iad"
    config_class = IadConfig

    @property
    def warming_up(self) -> bool:
        """True while the loss is plain ARD (``self.epoch < warmup_epochs``)."""
        return self.epoch < self.warmup_epochs

    def reliability(self, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A = p_T(x_adv)_y ** beta per sample (teacher at temperature 1), without gradient."""
        probs = F.softmax(self.teacher_logits(x_adv), dim=1)
        return probs.gather(1, y.view(-1, 1)).squeeze(1).pow(self.beta).detach()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        a = self.kd_weight
        introspect = not self.warming_up and a > 0
        t = self.ard_terms(x, y, nat_grad=introspect)
        if introspect:
            unreliability = 1.0 - self.reliability(t.x_adv, y)
            kl = kl_per_sample(F.log_softmax(t.logits_nat.float(), dim=1), t.logits_adv)
            self_kl = a * ard_kl_scale(t.logits_adv.shape[1]) * (unreliability * kl).mean()
        else:
            self_kl = t.kd.new_zeros(())
        loss = t.kd + t.ce + self_kl
        return StepOutput(
            loss=loss,
            logits=t.logits_adv,
            parts={"kd": t.kd.detach(), "ce": t.ce.detach(), "self_kl": self_kl.detach()},
        )
