"""adv_path's knobs beyond the first reconstruction: the aggregate over iterates, whose probability change
weighs an iterate, RSLAD's KL step loss, presets, strict knob values and the count of samples left without an
adversarial term. Each on a case whose answer can be checked by hand."""

from __future__ import annotations

import typing

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rkd.config import ADV_PATH_PRESETS, AdvPathConfig
from rkd.distill.adv_path import AdvPath
from rkd.distill.losses import RSLAD_KL_SCALE, kl_per_sample, soft_targets
from rkd.distill.rslad import Rslad
from rkd.errors import UsageError
from rkd.models import create_model

EPS, ALPHA = 8 / 255, 2 / 255
RECON = ADV_PATH_PRESETS["reconstruction"]


def _models(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    return create_model("resnet18", width=0.125).eval(), create_model("resnet18", width=0.25).eval()


def _batch(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)


class Constant(nn.Module):
    """A teacher whose output does not depend on the input: no iterate moves its probabilities."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)
        self.p = nn.Parameter(torch.zeros(()))  # a parameter, so the teacher can be frozen like a real one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1) + 0 * self.p


def _weights_and_coef(method: AdvPath, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    paths = method.craft(x, y)
    with torch.no_grad():
        teacher_clean = method.teacher(x)
        p_clean = F.softmax(teacher_clean, 1)
        p_iter = F.softmax(method.teacher(paths.u.flatten(0, 1)), 1).view(*paths.u.shape[:2], -1)
    w = method._weights("u", p_iter, p_clean, y, paths, 0)
    coef = method._alignment(x, y, paths, teacher_clean)[2].view(len(paths.steps), len(x))
    return w, coef


def test_mean_renormalises_each_sample_and_sum_keeps_the_batch_max_scale() -> None:
    student, teacher = _models()
    x, y = _batch()
    factor = (1 - 1 / 6) / len(x)
    # the student's own drops: every sample moves
    knobs = {"steps": 3, "gamma": 0.0, "step_loss": "ce", "weights": "prob_change", "weight_model": "path"}
    w, coef = _weights_and_coef(AdvPath(student, teacher, aggregate="mean", **knobs,
                                        generator=torch.Generator().manual_seed(0)), x, y)
    moved = w.sum(0) > 0
    assert bool(moved.all())
    # mean: a sample's coefficients sum to the branch factor whatever its weights' size
    assert torch.allclose(coef.sum(0), torch.full((len(x),), factor), rtol=1e-5)
    w2, coef2 = _weights_and_coef(AdvPath(student, teacher, aggregate="sum", **knobs,
                                          generator=torch.Generator().manual_seed(0)), x, y)
    assert torch.equal(w, w2)
    # sum: coefficient = weight x factor; the largest weight of the batch is 1, so only that iterate gets the
    # full factor and a sample's total is its weights' sum (up to K = 3)
    assert torch.allclose(coef2, w2 * factor, rtol=1e-6)
    assert float(w2.max()) == pytest.approx(1.0)
    assert float((coef2.sum(0) / factor).max()) <= 3.0 + 1e-6
    assert not torch.allclose(coef2.sum(0), coef.sum(0))


def test_samples_without_any_weight_are_counted_and_get_no_adversarial_term() -> None:
    student, _ = _models()
    teacher = Constant(torch.randn(1, 10, generator=torch.Generator().manual_seed(0)))
    x, y = _batch()
    for aggregate in ("mean", "sum"):
        method = AdvPath(student, teacher, **{**RECON, "aggregate": aggregate}, steps=2,
                         generator=torch.Generator().manual_seed(0))
        out = method(x, y)  # the teacher's probabilities never change: every prob_change weight is 0
        assert float(out.stats["zero_weight_u"]) == 1.0 and float(out.stats["zero_weight_t"]) == 1.0
        assert float(out.parts["path_u"]) == 0.0 and float(out.parts["path_t"]) == 0.0
        kl_nat = kl_per_sample(soft_targets(teacher(x)), student(x)).mean() * RSLAD_KL_SCALE
        assert out.loss.item() == pytest.approx(1 / 6 * kl_nat.item(), rel=1e-5)
    uniform = AdvPath(student, teacher, **{**RECON, "weights": "uniform"}, steps=2)(x, y)
    assert float(uniform.stats["zero_weight_u"]) == 0.0 and float(uniform.parts["path_u"]) > 0.0


def test_path_weights_are_the_crafting_models_own_probabilities() -> None:
    student, teacher = _models()
    x, y = _batch()
    method = AdvPath(student, teacher, **{**RECON, "weight_model": "path", "iterate_stride": 2}, steps=3,
                     generator=torch.Generator().manual_seed(3))
    method.train()  # crafting runs the student in eval mode (crafting_mode eval): so are the recorded outputs
    paths = method.craft(x, y)
    assert paths.probs is not None and paths.start_probs is not None
    assert paths.probs.shape == (2, 2, len(x), 10) and paths.steps == [2, 3]
    student.eval()
    with torch.no_grad():
        for i, branch in enumerate((paths.u, paths.t)):
            for k in range(len(paths.steps)):
                assert torch.allclose(paths.probs[i, k], F.softmax(student(branch[k]), 1), atol=1e-5)
            # x_0 = x + 0.001 N: the start's probabilities are the clean ones up to that noise
            assert torch.allclose(paths.start_probs[i], F.softmax(student(x), 1), atol=1e-2)
    # the untargeted weight is the drop of the student's true-class probability, normalised by its batch max
    idx = torch.arange(len(y))
    drop = (paths.start_probs[0][idx, y][None] - paths.probs[0][:, idx, y]).clamp_min(0)
    w = method._weights("u", paths.probs[0], paths.start_probs[0], y, paths, 0)
    assert torch.allclose(w, drop / drop.max(), atol=1e-6)
    assert AdvPath(student, teacher, **RECON, steps=3).craft(x, y).probs is None  # teacher weights: nothing recorded


def test_kl_step_loss_ascends_rslads_objective() -> None:
    """One step of branch U from x_0 is x_0 + alpha sign(grad KL(p_T(x) || p_S(x_0))), projected."""
    student, teacher = _models()
    x, y = _batch()
    method = AdvPath(student, teacher, steps=1, gamma=0.0, step_loss="kl", generator=torch.Generator().manual_seed(9))
    paths = method.craft(x, y)
    x0 = (x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(9))).clamp(0, 1).requires_grad_()
    with torch.no_grad():
        target = soft_targets(teacher(x))
    (grad,) = torch.autograd.grad(kl_per_sample(target, student(x0)).sum(), x0)
    expected = torch.min(torch.max(x0.detach() + ALPHA * grad.sign(), x - EPS), x + EPS).clamp(0, 1)
    assert torch.allclose(paths.u[0], expected, atol=1e-6)
    ce = AdvPath(student, teacher, steps=1, gamma=0.0, step_loss="ce",
                 generator=torch.Generator().manual_seed(9)).craft(x, y)
    assert not torch.allclose(ce.u[0], paths.u[0])


def test_reduced_with_the_kl_step_it_is_rslad_step_for_step() -> None:
    """Branch U only, its last iterate, uniform weights, clean-teacher target and RSLAD's KL ascent: the same
    x_adv as RSLAD's own attack from the same start, and the same loss."""
    student, teacher = _models()
    x, y = _batch()
    rslad = Rslad(student, teacher, steps=3, generator=torch.Generator().manual_seed(4))
    method = AdvPath(student, teacher, steps=3, gamma=0.0, iterate_stride=3, weights="uniform", align_target="clean",
                     step_loss="kl", aggregate="sum", generator=torch.Generator().manual_seed(4))
    x_adv = rslad.craft(x, y)
    paths = method.craft(x, y)
    assert torch.allclose(paths.u[-1], x_adv, atol=1e-6)
    student.train()
    assert method.loss_on(x, y, paths).loss.item() == pytest.approx(rslad.loss_on(x, y, x_adv).loss.item(), rel=1e-5)


@pytest.mark.parametrize(("knob", "value"), [("weights", "prob-change"), ("step_loss", "margin"),
                                             ("aggregate", "max"), ("weight_model", "student"),
                                             ("align_target", "teacher"), ("target", "second")])
def test_an_unknown_knob_value_is_a_one_line_error(knob: str, value: str) -> None:
    student, teacher = _models()
    with pytest.raises(UsageError) as err:
        AdvPath(student, teacher, **{knob: value})
    text = str(err.value)
    allowed = typing.get_args(AdvPathConfig.model_fields[knob].annotation)  # the recipe schema's values
    assert "\n" not in text and knob in text and repr(value) in text
    assert allowed and all(repr(a) in text for a in allowed)


def test_a_method_takes_its_recipe_section_and_keyword_knobs_on_top() -> None:
    """One source of knobs: the recipe section (as ``rkd distill`` builds it) or keywords, validated the same."""
    student, teacher = _models()
    cfg = AdvPathConfig(preset="reconstruction", steps=4)
    method = AdvPath(student, teacher, cfg, gamma=0.5)
    assert (method.steps, method.weights, method.aggregate, method.gamma) == (4, "prob_change", "mean", 0.5)
    assert method.config.gamma == 0.5 and cfg.gamma == 1.0  # the given section is not changed
    with pytest.raises(UsageError, match="unknown key"):
        AdvPath(student, teacher, stepz=3)
    with pytest.raises(UsageError, match="distils from a teacher"):
        AdvPath(student, None)


@pytest.mark.parametrize("preset", sorted(ADV_PATH_PRESETS))
def test_preset_fills_the_knobs_a_recipe_leaves_unset(preset: str) -> None:
    cfg = AdvPathConfig(preset=preset, gamma=0.5)
    for knob, value in ADV_PATH_PRESETS[preset].items():
        assert getattr(cfg, knob) == (0.5 if knob == "gamma" else value), knob
    with pytest.raises(ValueError):
        AdvPathConfig(preset="nonexistent")


def test_the_defaults_are_the_kl_linear_sum_preset_in_the_recipe_and_the_class() -> None:
    """One default, stated once in the presets: the recipe schema and a method built without settings agree."""
    student, teacher = _models()
    cfg, method = AdvPathConfig(), AdvPath(student, teacher)
    for knob, value in ADV_PATH_PRESETS["kl_linear_sum"].items():
        assert getattr(cfg, knob) == value, knob
        assert getattr(method, knob) == value, knob


@pytest.mark.parametrize(("knobs", "expected"), [
    ({"aggregate": "max"}, "student.method.aggregate: Input should be 'mean' or 'sum' (got 'max')"),
    ({"weight_model": "student"}, "student.method.weight_model: Input should be 'teacher' or 'path'"),
    ({"step_loss": "kld"}, "student.method.step_loss: Input should be 'ce', 'cw' or 'kl'"),
    ({"preset": "paper"}, "student.method.preset: Input should be 'kl_linear_sum' or 'reconstruction'"),
])
def test_a_recipe_with_an_unknown_knob_value_is_a_one_line_recipe_error(knobs: dict, expected: str) -> None:
    from rkd.config import validate_recipe
    from rkd.errors import RecipeError

    raw = {"name": "t", "student": {"model": {"name": "resnet18"}, "method": {"name": "adv_path", **knobs}}}
    with pytest.raises(RecipeError) as err:
        validate_recipe(raw, "r.yaml")
    assert "\n" not in str(err.value) and expected in str(err.value)
