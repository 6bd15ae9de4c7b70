"""Every registered training method: one step on a tiny model behaves (finite loss, gradients where they belong,
parts that add up to the loss)."""

from __future__ import annotations

import pytest
import torch
from pydantic import TypeAdapter

from rkd.config import TeacherMethodConfig
from rkd.distill import METHODS, create_method
from rkd.models import create_model

TEACHER_FREE = [name for name in METHODS.names() if not METHODS.get(name).needs_teacher]


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)


@pytest.mark.parametrize("name", TEACHER_FREE)
def test_one_step_is_finite_and_trains_only_the_student(name: str) -> None:
    torch.manual_seed(0)
    cfg = TypeAdapter(TeacherMethodConfig).validate_python({"name": name, "steps": 2})
    student = create_model("resnet18", width=0.125)
    method = create_method(cfg, student=student)
    method.train()
    x, y = _batch()
    out = method(x, y)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.logits.shape == (8, 10)
    assert sum(v for v in out.parts.values()).item() == pytest.approx(out.loss.item(), rel=1e-5, abs=1e-6)
    assert all(not v.requires_grad for v in out.parts.values())
    out.loss.backward()
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.requires_grad for p in student.parameters())  # the attack restored them
    assert method.student.training


def test_trades_with_beta_zero_is_plain_cross_entropy() -> None:
    torch.manual_seed(0)
    cfg = TypeAdapter(TeacherMethodConfig).validate_python({"name": "trades", "beta": 0.0, "steps": 1})
    student = create_model("resnet18", width=0.125)
    method = create_method(cfg, student=student).train()
    x, y = _batch()
    out = method(x, y)
    student.train()
    ce = torch.nn.functional.cross_entropy(student(x), y)
    assert out.loss.item() == pytest.approx(ce.item(), rel=1e-5)


def test_pgd_at_trains_on_adversarial_inputs() -> None:
    """PGD-AT's loss on a trained-ish model is the CE at x_adv: not below the clean CE."""
    torch.manual_seed(0)
    student = create_model("resnet18", width=0.125).eval()
    cfg = TypeAdapter(TeacherMethodConfig).validate_python({"name": "pgd_at", "steps": 3})
    method = create_method(cfg, student=student)
    method.eval()  # batch-norm statistics frozen, so clean and adversarial passes are comparable
    x, y = _batch()
    out = method(x, y)
    with torch.no_grad():
        clean = torch.nn.functional.cross_entropy(student(x), y)
    assert out.loss.item() >= clean.item()
