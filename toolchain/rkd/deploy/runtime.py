"""The ``Runtime`` interface every backend implements (torch, ONNX Runtime in :mod:`rkd.deploy.runtimes`,
TensorRT in :mod:`rkd.deploy.tensorrt_runtime`): ``predict(x)`` on float32 NCHW images in [0, 1] -> float32
logits on ``x``'s device, batched by ``batch_size``; ``describe()`` says what ran."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from rkd.errors import UsageError


class Runtime(ABC):
    """Runs a classifier: ``predict(x) -> logits``, batched by ``batch_size``; ``describe() -> dict``."""

    name: ClassVar[str]
    batch_size: int = 256
    #: The declared input shape (None for a dynamic axis), where the backend says; None when unknown.
    input_shape: tuple[int | None, ...] | None = None

    @abstractmethod
    def _predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of one batch (at most ``batch_size`` images), float32, any device."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What runs: ``runtime`` name, versions, device/providers, file and sha256 where there is one."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (float32, on ``x.device``, no gradient) for float NCHW images ``x`` in [0, 1].

        The range is not checked here (this is the hot path of every attack); callers feed [0, 1] images.

        Raises:
            UsageError: ``x`` is not a 4-D floating tensor with 3 channels.
        """
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point() or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise UsageError(f"{self.name} runtime expects float images shaped (N, 3, H, W), got {shape}")
        x = x.detach()
        if x.dtype != torch.float32:
            x = x.float()
        if len(x) <= self.batch_size:
            return self._predict_batch(x).to(device=x.device, dtype=torch.float32)
        parts = [self._predict_batch(x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return torch.cat([p.to(device=x.device, dtype=torch.float32) for p in parts])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)
