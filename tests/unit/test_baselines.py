"""The distillation methods and baselines (ARD, IAD, RSLAD, AdaAD, and every other method with a teacher): one
step on tiny models behaves, and each baseline's loss is its published formula at rkd's stated scale."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pydantic import TypeAdapter, ValidationError

from rkd.config import DistillMethodConfig
from rkd.distill import METHODS, DistillMethod, create_method
from rkd.distill.losses import RSLAD_KL_SCALE
from rkd.errors import UsageError
from rkd.models import create_model

WITH_TEACHER = [name for name in METHODS.names() if METHODS.get(name).needs_teacher]


def _config(name: str, **knobs: Any) -> Any:
    return TypeAdapter(DistillMethodConfig).validate_python({"name": name, "steps": 2, **knobs})


def _models() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return create_model("resnet18", width=0.125), create_model("resnet18", width=0.25)


def _method(name: str, **knobs: Any) -> DistillMethod:
    student, teacher = _models()
    return create_method(_config(name, **knobs), student=student, teacher=teacher)


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def _kl_batchmean(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_T || p_S) summed over classes, batch mean, by torch's own kl_div."""
    log_q, p = F.log_softmax(student_logits, dim=1), F.softmax(teacher_logits, dim=1)
    return F.kl_div(log_q, p, reduction="batchmean")


def test_every_baseline_is_registered() -> None:
    assert {"ard", "iad", "rslad", "adaad"} <= set(WITH_TEACHER)


@pytest.mark.parametrize("name", WITH_TEACHER)
def test_one_step_trains_the_student_only(name: str) -> None:
    method = _method(name)
    method.train()
    assert not method.teacher.training
    x, y = _batch()
    out = method(x, y)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.logits.shape == (8, 10)
    assert sum(v for v in out.parts.values()).item() == pytest.approx(out.loss.item(), rel=1e-5, abs=1e-7)
    assert all(not v.requires_grad for v in out.parts.values())
    out.loss.backward()
    assert all(p.grad is not None for p in method.student.parameters())
    assert all(p.grad is None for p in method.teacher.parameters())
    assert all(p.requires_grad for p in method.student.parameters())  # the attack restored them
    assert method.student.training and not method.teacher.training


@pytest.mark.parametrize("name", WITH_TEACHER)
def test_a_teacher_is_required(name: str) -> None:
    student, _ = _models()
    with pytest.raises(UsageError, match="teacher"):
        create_method(_config(name), student=student)


def test_ard_without_kd_is_clean_cross_entropy() -> None:
    method = _method("ard", kd_weight=0.0).train()
    x, y = _batch()
    out = method(x, y)
    ce = F.cross_entropy(method.student(x), y)  # train mode, as in the method
    assert out.loss.item() == pytest.approx(ce.item(), rel=1e-5)
    assert out.parts["kd"].item() == 0.0


def test_ard_kd_term_is_the_kl_over_the_number_of_classes() -> None:
    method = _method("ard", temperature=1.0, kd_weight=1.0).train()
    x, y = _batch()
    out = method(x, y)
    with torch.no_grad():
        expected = _kl_batchmean(out.logits, method.teacher(x)) / 10
    assert RSLAD_KL_SCALE == pytest.approx(1 / 10)
    assert out.parts["kd"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.parts["ce"].item() == 0.0


def test_ard_temperature_multiplies_by_tau_squared() -> None:
    method = _method("ard", temperature=4.0, kd_weight=0.5).train()
    x, y = _batch()
    out = method(x, y)
    with torch.no_grad():
        kl = _kl_batchmean(out.logits / 4.0, method.teacher(x) / 4.0) / 10
    assert out.parts["kd"].item() == pytest.approx(0.5 * 16.0 * kl.item(), rel=1e-5)


def test_rslad_natural_term_is_torch_kl_on_rslad_scale() -> None:
    method = _method("rslad", lambda_nat=1.0).train()
    x, y = _batch()
    x_adv = method.craft(x, y)
    out = method.loss_on(x, y, x_adv)
    with torch.no_grad():
        expected = 0.1 * _kl_batchmean(method.student(x), method.teacher(x))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.parts["kd_adv"].item() == 0.0


def test_rslad_adversarial_term_follows_the_formula() -> None:
    method = _method("rslad", lambda_nat=0.25).train()
    x, y = _batch()
    x_adv = method.craft(x, y)
    out = method.loss_on(x, y, x_adv)
    with torch.no_grad():
        t = method.teacher(x)
        adv = 0.75 * 0.1 * _kl_batchmean(method.student(x_adv), t)
        nat = 0.25 * 0.1 * _kl_batchmean(method.student(x), t)
    assert out.parts["kd_adv"].item() == pytest.approx(adv.item(), rel=1e-5)
    assert out.parts["kd_nat"].item() == pytest.approx(nat.item(), rel=1e-5)


def test_rslad_craft_stays_in_the_ball_and_raises_the_kl() -> None:
    method = _method("rslad", steps=5).train()
    x, y = _batch()
    x_adv = method.craft(x, y)
    assert method.student.training  # eval only while crafting
    eps = 8 / 255
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    method.eval()
    with torch.no_grad():
        t = method.teacher(x)
        assert _kl_batchmean(method.student(x_adv), t) > _kl_batchmean(method.student(x), t)


def test_rslad_restores_the_student_mode_on_errors() -> None:
    method = _method("rslad").train()
    x, _ = _batch()
    with pytest.raises(UsageError):
        method.craft(x, torch.zeros(3, dtype=torch.long))  # wrong number of labels
    assert method.student.training


def test_adaad_craft_raises_the_discrepancy_at_the_same_point() -> None:
    method = _method("adaad", steps=5).train()
    x, y = _batch()
    x_adv = method.craft(x, y)
    assert method.student.training
    assert (x_adv - x).abs().max().item() <= 8 / 255 + 1e-6
    method.eval()
    with torch.no_grad():
        at_adv = _kl_batchmean(method.student(x_adv), method.teacher(x_adv))
        at_x = _kl_batchmean(method.student(x), method.teacher(x))
    assert at_adv > at_x


def test_adaad_without_kd_weight_is_the_natural_term() -> None:
    method = _method("adaad", kd_weight=0.0).train()
    x, y = _batch()
    out = method(x, y)
    with torch.no_grad():
        expected = 0.1 * _kl_batchmean(method.student(x), method.teacher(x))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.parts["kd_adv"].item() == 0.0


def test_adaad_adversarial_term_uses_the_teacher_at_x_adv() -> None:
    method = _method("adaad", kd_weight=1.0).eval()  # eval: the student's outputs are reproducible
    x, y = _batch()
    torch.manual_seed(1)
    out = method(x, y)
    torch.manual_seed(1)
    x_adv = method.craft(x, y)
    with torch.no_grad():
        expected = 0.1 * _kl_batchmean(method.student(x_adv), method.teacher(x_adv))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_iad_warm_up_is_ard() -> None:
    ard, iad = _method("ard", temperature=1.0), _method("iad", temperature=1.0)
    ard.train()
    iad.train()
    iad.set_epoch(0)
    x, y = _batch()
    torch.manual_seed(3)
    out_ard = ard(x, y)
    torch.manual_seed(3)
    out_iad = iad(x, y)
    assert out_iad.loss.item() == pytest.approx(out_ard.loss.item(), rel=1e-6)
    assert out_iad.parts["self_kl"].item() == 0.0
    iad.set_epoch(59)
    assert iad.warming_up  # epochs 0..59 of warmup_epochs=60


def test_iad_after_warm_up_adds_the_introspection_term() -> None:
    iad = _method("iad", temperature=1.0, beta=0.1).train()
    iad.set_epoch(60)
    assert not iad.warming_up
    x, y = _batch()
    out = iad(x, y)
    assert out.parts["self_kl"].item() > 0.0
    reliability = iad.reliability(x, y)
    assert not reliability.requires_grad
    assert ((reliability > 0) & (reliability <= 1)).all()
    out.loss.backward()
    assert all(p.grad is None for p in iad.teacher.parameters())


def test_a_knob_of_another_method_is_rejected() -> None:
    with pytest.raises(ValidationError):
        _config("rslad", temperature=2)
    with pytest.raises(ValidationError):
        _config("adaad", lambda_nat=0.5)


def test_adaad_inner_objective_differentiates_through_the_teacher() -> None:
    method = _method("adaad").eval()
    x, _ = _batch(4)
    x = x.requires_grad_(True)
    (through_both,) = torch.autograd.grad(method.discrepancy(x).sum(), x)
    fixed_teacher = F.log_softmax(method.teacher_logits(x), dim=1)
    log_q = F.log_softmax(method.student(x), dim=1)
    student_only = F.kl_div(log_q, fixed_teacher, log_target=True, reduction="sum")
    (grad_student_only,) = torch.autograd.grad(student_only, x)
    assert not torch.allclose(through_both, grad_student_only)
    assert all(p.grad is None for p in method.teacher.parameters())
