"""The method interface (timm's ``TrainingTask`` shape, typed): a module that owns the student, the frozen
teacher and its inner attack, and returns the loss with its parts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from rkd.registry import Registry


@dataclass
class StepOutput:
    """What one training step produced.

    Attributes:
        loss: the scalar the optimizer minimises (``backward`` is called on it).
        logits: student logits used for the train accuracy shown in progress (on the adversarial input for
            adversarial methods).
        parts: named components of the loss, each a detached scalar; for methods whose loss is a weighted
            sum the parts are the weighted terms and add up to ``loss``.
        backward_done: the method already set the student's ``.grad`` to the loss's gradient (accumulated in
            pieces to save memory) and ``loss`` is detached: the caller steps the optimizer without
            ``zero_grad``/``backward``.
        stats: diagnostics of the step that are not loss terms (detached scalars, e.g. the share of samples
            left without an adversarial term); the training loop averages them into metrics.jsonl.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    backward_done: bool = False
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


class DistillMethod(nn.Module):
    """A training step. Subclasses set ``name`` and implement :meth:`forward`.

    The student is ``self.student`` (the only module whose parameters are trained); the teacher, when the
    method has one, is ``self.teacher``: frozen (``requires_grad`` off), always in eval mode, never updated.
    """

    name: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = False

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None) -> None:
        super().__init__()
        self.student = student
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        self.teacher = teacher
        self.attack_model: nn.Module = student  # replaced by a compiled twin when compile_attack is on
        self.epoch = 0

    @classmethod
    def from_config(cls, config: Any, *, student: nn.Module, teacher: nn.Module | None = None) -> DistillMethod:
        """Build from the method's validated recipe section: every field but ``name`` is a keyword argument."""
        knobs = config.model_dump(exclude={"name", "preset"})  # a preset is already applied to the knobs
        if cls.needs_teacher:
            if teacher is None:
                from rkd.errors import UsageError

                raise UsageError(f"method '{cls.name}' distils from a teacher: give one (--teacher CHECKPOINT)")
            return cls(student, teacher, **knobs)
        return cls(student, **knobs)

    def train(self, mode: bool = True) -> DistillMethod:
        """Train/eval the student; the teacher stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def set_epoch(self, epoch: int) -> None:
        """Called by the loop at the start of each epoch (methods with epoch-dependent losses use it)."""
        self.epoch = epoch

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's logits at ``x`` (float32, no autograd; bf16 autocast on CUDA).

        ``no_grad`` rather than ``inference_mode``: the outputs are used as constants inside the student's
        autograd graph, which inference tensors are not allowed to be.
        """
        if self.teacher is None:
            raise RuntimeError(f"method '{self.name}' has no teacher")
        if x.is_cuda:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.teacher(x).float()
        return self.teacher(x).float()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimizer updates: the student's."""
        return [p for p in self.student.parameters() if p.requires_grad]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError


MethodFactory = Callable[..., DistillMethod]
METHODS: Registry[Any] = Registry("method")


def create_method(config: Any, student: nn.Module, teacher: nn.Module | None = None) -> DistillMethod:
    """Build the method named by ``config.name`` from its validated recipe section."""
    return METHODS.get(config.name).from_config(config, student=student, teacher=teacher)
