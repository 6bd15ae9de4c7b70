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

    #: The method's recipe section (:mod:`rkd.config`): its fields are the method's knobs, set as attributes.
    config_class: ClassVar[type[Any] | None] = None

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, config: Any = None, *,
                 generator: torch.Generator | None = None, **knobs: Any) -> None:
        """``config`` (the validated recipe section) with ``knobs`` on top, validated again: an unknown knob or
        value is a one-line :class:`~rkd.errors.UsageError`. ``generator`` seeds the method's random draws."""
        super().__init__()
        if self.needs_teacher and teacher is None:
            from rkd.errors import UsageError

            raise UsageError(f"method '{self.name}' distils from a teacher: give one (--teacher CHECKPOINT)")
        self.student = student
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        self.teacher = teacher
        self.attack_model: nn.Module = student  # replaced by a compiled twin when compile_attack is on
        self.epoch = 0
        self.generator = generator
        self.config = self._settings(config, knobs)
        if self.config is not None:
            for key, value in self.config.model_dump(exclude={"name", "preset"}).items():
                setattr(self, key, value)

    @classmethod
    def _settings(cls, config: Any, knobs: dict[str, Any]) -> Any:
        """``config`` updated with ``knobs`` and validated by :attr:`config_class` (None without one)."""
        if cls.config_class is None:
            if knobs:
                raise TypeError(f"method '{cls.name}' takes no settings, got {', '.join(knobs)}")
            return None
        from pydantic import ValidationError

        from rkd.config import format_validation_error
        from rkd.errors import UsageError

        base = config.model_dump(exclude={"preset"}) if config is not None else {}
        try:
            return cls.config_class.model_validate({**base, **knobs, "name": cls.name})
        except ValidationError as exc:
            raise UsageError(format_validation_error(exc, f"method {cls.name}", cls.config_class)) from None

    @classmethod
    def from_config(cls, config: Any, *, student: nn.Module, teacher: nn.Module | None = None) -> DistillMethod:
        """Build from the method's validated recipe section."""
        return cls(student, teacher if cls.needs_teacher else None, config)

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
