"""Training methods: robust distillation methods and teacher-free adversarial training, one module each.

Every method is a :class:`DistillMethod` registered in :data:`METHODS`; the training loop knows nothing else.
"""

from __future__ import annotations

from rkd.distill.base import METHODS, DistillMethod, StepOutput, create_method

# Importing the method modules registers them.
from rkd.distill import adv_path as _adv_path  # noqa: E402,F401
from rkd.distill import pgd_at as _pgd_at  # noqa: E402,F401
from rkd.distill import trades as _trades  # noqa: E402,F401
from rkd.distill import ard as _ard  # noqa: E402,F401
from rkd.distill import iad as _iad  # noqa: E402,F401
from rkd.distill import rslad as _rslad  # noqa: E402,F401
from rkd.distill import adaad as _adaad  # noqa: E402,F401

__all__ = ["METHODS", "DistillMethod", "StepOutput", "create_method"]
