"""``EngineModel``: an engine that gives no gradients, made attackable by any white-box attack.

BPDA (Athalye et al. 2018, "Obfuscated Gradients Give a False Sense of Security"): the forward value is the
engine's (ONNX Runtime, TensorRT: the artifact that ships), the input gradient is a differentiable surrogate's
at the same point, in one line: ``s(x) + (engine(x) - s(x)).detach()``. The best surrogate of an INT8 engine is
its fake-quant replica with the QDQ file's own scales (:mod:`rkd.quantize.surrogate`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class EngineModel(nn.Module):
    """Forward value from ``engine`` (an rkd ``Runtime``), input gradient from ``surrogate``.

    Under ``torch.no_grad``/``inference_mode``, or when ``x`` needs no gradient (Square's queries, every
    success check), it returns the engine's logits alone: a surrogate pass there would be wasted. It owns the
    surrogate, so ``next(model.parameters())`` gives the device attack libraries read. The surrogate's weights
    are laid out channels_last (in place), the layout in which oneDNN runs convolutions fastest on CPU.

    Attributes:
        calls: engine forward passes so far, and ``images``: images sent to the engine (for timing reports).
    """

    def __init__(self, engine: Any, surrogate: nn.Module | None) -> None:
        super().__init__()
        if surrogate is not None:  # channels_last weights: oneDNN's faster convolutions, the same integer values
            surrogate = surrogate.eval().to(memory_format=torch.channels_last)
        self.surrogate = surrogate  # None: engine values only
        self.engine = engine
        self.calls = 0
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Engine logits, carrying the surrogate's gradient when ``x`` requires one."""
        self.calls += 1
        self.images += int(x.shape[0])
        if self.surrogate is None or not (torch.is_grad_enabled() and x.requires_grad):
            return self.engine.predict(x)
        s = self.surrogate(x)
        e = self.engine.predict(x).to(device=s.device, dtype=s.dtype)
        return s + (e - s).detach()
