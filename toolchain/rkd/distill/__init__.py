"""Training methods: robust distillation methods and teacher-free adversarial training, one module each.

Every method is a :class:`DistillMethod` registered in :data:`METHODS` (importing a method's module registers
it); the training loop knows nothing else.
"""

from __future__ import annotations

from rkd.distill import adaad, adv_path, ard, iad, pgd_at, rslad, trades  # noqa: F401  (register the methods)
from rkd.distill.base import METHODS, DistillMethod, StepOutput, create_method

__all__ = ["METHODS", "DistillMethod", "StepOutput", "create_method"]
