"""The generic training loop shared by teacher training, distillation and robust QAT."""

from __future__ import annotations

from rkd.train.loop import TrainResult, fit
from rkd.train.progress import NullProgress, ProgressSink

__all__ = ["NullProgress", "ProgressSink", "TrainResult", "fit"]
