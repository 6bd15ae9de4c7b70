"""Adversarial attacks on classifiers taking float NCHW inputs in [0, 1] (normalisation inside the model).

- :func:`pgd`: projected gradient descent, L-inf/L2, untargeted/targeted, optional path of iterates
  (Madry et al. 2018). The training workhorse; :func:`run_pgd` takes its settings as a :class:`PGDConfig`.
- :func:`fgsm` (Goodfellow et al. 2015), :func:`cw_inf` and :func:`cw_margin` (Carlini & Wagner 2017).
- :func:`run_autoattack`: AutoAttack (Croce & Hein 2020) via pyautoattack, with a per-attack breakdown;
  pyautoattack is imported only when it is called.
- :func:`compile_attack_model`: ``torch.compile`` for the attacked model (training's ``compile_attack``).
"""

from __future__ import annotations

from rkd.attacks.autoattack import AutoAttackResult, run_autoattack
from rkd.attacks.compiled import compile_attack_model
from rkd.attacks.losses import cw_margin
from rkd.attacks.pgd import AttackResult, PGDConfig, cw_inf, fgsm, pgd, run_pgd

__all__ = [
    "AttackResult",
    "AutoAttackResult",
    "PGDConfig",
    "compile_attack_model",
    "cw_inf",
    "cw_margin",
    "fgsm",
    "pgd",
    "run_autoattack",
    "run_pgd",
]
