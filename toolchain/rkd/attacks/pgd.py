"""Projected gradient descent (Madry et al. 2018), FGSM (Goodfellow et al. 2015) and CW-inf (Carlini & Wagner
2017, L-inf PGD on the margin loss as in the TRADES/RSLAD evaluation code).

The model is a black box ``nn.Module`` taking float32 NCHW inputs in [0, 1] (normalisation inside) and
returning logits. The attacks never change its mode; they switch its parameters' ``requires_grad`` off for the
duration and restore it exactly (also on errors), and they never write ``.grad``.

:func:`run_pgd` takes its settings as one :class:`PGDConfig`; :func:`pgd` keeps the keyword form (16
keywords) as a front, because the methods, the suites and the tests call it that way in many places.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from rkd.attacks.checks import (
    check_choice,
    check_eps,
    check_images,
    check_labels,
    check_positive,
    frozen_parameters,
)
from rkd.attacks.compiled import compiled_forward
from rkd.attacks.losses import LossFn, resolve_loss
from rkd.attacks.predictions import predicted_class
from rkd.checks import check_int
from rkd.errors import UsageError

NORMS = ("linf", "l2")
STARTS = ("random", "zero", "gaussian")
GAUSSIAN_START_STD = 0.001  # TRADES / RSLAD: x + 0.001 * N(0, I)


@dataclass
class AttackResult:
    """What :func:`pgd` returns.

    Attributes:
        x_adv: the final iterate x_m, shaped like x.
        path: with ``return_path=True`` the iterates x_1..x_m after each step, shaped (steps, N, C, H, W)
            (``path[-1]`` is x_m; the start x_0 is not included); else None.
        misclassified: with ``keep_misclassified=True`` a bool (N,): the model misclassified one of the
            iterates x_0..x_{m-1} (x_m is not evaluated); else None.
        first_misclassified: with ``keep_misclassified=True`` the first such iterate per sample (x_m where
            there is none), shaped like x; else None.
    """

    x_adv: torch.Tensor
    path: torch.Tensor | None = None
    misclassified: torch.Tensor | None = None
    first_misclassified: torch.Tensor | None = None


def _noise(kind: str, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """U(0, 1) or N(0, 1) noise shaped and laid out like x (a channels_last x keeps its layout)."""
    t = torch.empty_like(x)
    if generator is None or generator.device == x.device:
        return t.uniform_(generator=generator) if kind == "uniform" else t.normal_(generator=generator)
    fn = torch.rand if kind == "uniform" else torch.randn
    return t.copy_(fn(x.shape, generator=generator, device=generator.device, dtype=x.dtype))


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, shaped (N, 1, 1, ...) for broadcasting."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


def _project_l2(x_new: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    delta = x_new - x
    factor = (eps / _flat_norm(delta).clamp_min(1e-12)).clamp_max(1.0)
    # Clipping to [0, 1] after the ball projection moves each coordinate towards x: it stays in the ball.
    return delta.mul_(factor).add_(x).clamp_(0.0, 1.0)


def _start(
    x: torch.Tensor,
    start: str,
    norm: str,
    eps: float,
    lower: torch.Tensor | None,
    upper: torch.Tensor | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    if start == "zero":
        return x.clone()
    if start == "gaussian":
        x0 = _noise("normal", x, generator).mul_(GAUSSIAN_START_STD).add_(x)
    elif norm == "linf":
        x0 = _noise("uniform", x, generator).mul_(2.0 * eps).sub_(eps).add_(x)
    else:  # random start in the L2 ball: uniform direction, radius uniform in [0, eps]
        d = _noise("normal", x, generator)
        d = d / _flat_norm(d).clamp_min(1e-12)
        gen_device = generator.device if generator is not None else x.device
        r = torch.rand(x.shape[0], generator=generator, device=gen_device, dtype=x.dtype).to(x.device) * eps
        x0 = d.mul_(r.view(-1, *([1] * (x.dim() - 1)))).add_(x)
    if norm == "linf":
        return x0.clamp_(lower, upper)
    return _project_l2(x0, x, eps)


def _alloc_path(steps: int, x: torch.Tensor) -> torch.Tensor:
    """(steps, *x.shape), laid out like x (channels_last stays channels_last in every path[k])."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        n, c, h, w = x.shape
        return torch.empty((steps, n, h, w, c), dtype=x.dtype, device=x.device).permute(0, 1, 4, 2, 3)
    return torch.empty((steps, *x.shape), dtype=x.dtype, device=x.device)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "linf",
    targeted: bool = False,
    start: str = "random",
    loss: str | LossFn = "ce",
    return_path: bool = False,
    generator: torch.Generator | None = None,
    step_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    compiled: bool = False,
    x_init: torch.Tensor | None = None,
    keep_misclassified: bool = False,
) -> AttackResult:
    """Projected gradient descent (Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial
    Attacks").

    Untargeted: x_{k+1} = Proj(x_k + alpha * sign(grad L(S(x_k), y))) (L-inf; L2 uses the gradient divided
    by its per-sample L2 norm). Targeted: ``y`` holds the target classes and each step *descends* the loss of
    the target, x_{k+1} = Proj(x_k - alpha * sign(grad L(S(x_k), t))). Proj = the eps-ball around x
    intersected with [0, 1].

    Per step: one forward and one ``torch.autograd.grad`` with respect to the input only (no parameter
    gradients, no host synchronisation). Works under a caller's CUDA/CPU autocast. Not under
    ``torch.inference_mode`` (``torch.no_grad`` is fine). Pass the bare module, not a DDP wrapper.

    Args:
        model: the attacked classifier (inputs in [0, 1], logits out). Its mode is left as it is.
        x: (N, C, H, W) float images in [0, 1].
        y: (N,) true labels (untargeted) or target classes (targeted). With a callable ``loss`` anything that
            callable accepts (e.g. a teacher's probabilities), passed through unchanged.
        eps: radius; in (0, 1] for L-inf, positive for L2.
        alpha: step size (> 0).
        steps: number of steps m (>= 1).
        norm: "linf" or "l2".
        targeted: descend the loss of the targets ``y`` instead of ascending the loss of the labels.
        start: "random" (uniform in the L-inf ball; for L2 a uniform direction times a radius uniform in
            [0, eps]), "zero" (x itself) or "gaussian" (x + 0.001 * N(0, I), the TRADES/RSLAD start); always
            projected onto the ball and clipped to [0, 1].
        loss: "ce" (cross-entropy summed over the batch, so a sample's gradient does not depend on the
            batch), "cw" (the CW margin max_{j != y} z_j - z_y; targeted ascends z_t - max_{j != t} z_j), or
            a callable ``loss(logits, y) -> per-sample or scalar tensor`` that is ascended (descended when
            targeted); per-sample values are summed.
        return_path: also return every iterate x_1..x_m (one copy per step into a preallocated tensor).
        generator: RNG for the random/gaussian start (its device may differ from x's).
        step_fn: optional objective ``step_fn(x_adv) -> per-sample or scalar tensor`` that replaces
            ``loss(model(x_adv), y)`` in every step (e.g. AdaAD's KL(p_T(x') || p_S(x')), which re-evaluates
            the teacher at x'); same sign convention as ``loss``. Only ``model``'s parameters are frozen
            during the attack: freeze any other module it calls yourself.
        x_init: start from this point instead of drawing one with ``start`` (projected onto the ball and
            [0, 1]); lets a caller draw the start noise itself, e.g. one draw for several branches.
        compiled: run the model's forward through one process-wide ``torch.compile`` (default mode), shared by
            all models of one architecture (see :mod:`rkd.attacks.compiled`). Measured 1.2-2.9x per step on
            the 2-core CPU for MobileNetV2-class models; the first call compiles for tens of seconds (set
            ``TORCHINDUCTOR_CACHE_DIR``). Off by default.
        keep_misclassified: untargeted, built-in loss only: also return, per sample, the first iterate of
            x_0..x_{m-1} the model misclassified (its forward value is computed for the gradient anyway, so
            this costs no model call). An attack on a model whose gradients come from elsewhere (an engine
            behind a surrogate) can pass through a fooling point and leave it; a verifier then counts the
            whole path, as AutoAttack's APGD keeps its best point.

    Returns:
        :class:`AttackResult` with ``x_adv`` and, with ``return_path``, ``path`` (steps, N, C, H, W);
        ``x_adv`` is then the view ``path[-1]``.

    Raises:
        UsageError: eps outside (0, 1] (L-inf), steps < 1, alpha <= 0, inputs outside [0, 1], bad shapes or
            unknown norm/start/loss.
    """
    config = PGDConfig(eps=eps, alpha=alpha, steps=steps, norm=norm, targeted=targeted, start=start, loss=loss,
                       return_path=return_path, compiled=compiled, keep_misclassified=keep_misclassified)
    return run_pgd(model, x, y, config, generator=generator, step_fn=step_fn, x_init=x_init)


@dataclass(frozen=True)
class PGDConfig:
    """The settings of one PGD attack (the keywords of :func:`pgd`, which documents each)."""

    eps: float
    alpha: float
    steps: int
    norm: str = "linf"
    targeted: bool = False
    start: str = "random"
    loss: str | LossFn = "ce"
    return_path: bool = False
    compiled: bool = False
    keep_misclassified: bool = False

    def checked(self) -> PGDConfig:
        """The same settings, validated and normalised (UsageError naming the bad one)."""
        norm = check_choice("norm", self.norm, NORMS)
        return replace(self, norm=norm, eps=check_eps(self.eps, norm), alpha=check_positive("alpha", self.alpha),
                       steps=check_int("steps", self.steps), start=check_choice("start", self.start, STARTS))


def run_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: PGDConfig,
    *,
    generator: torch.Generator | None = None,
    step_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    x_init: torch.Tensor | None = None,
) -> AttackResult:
    """:func:`pgd` with its settings in a :class:`PGDConfig` (Madry et al. 2018); same arguments and result."""
    cfg = config.checked()
    loss_fn, builtin = resolve_loss(cfg.loss)
    if step_fn is not None and not callable(step_fn):
        raise UsageError(f"step_fn must be callable; got {type(step_fn).__name__}")
    if torch.is_inference_mode_enabled():
        raise UsageError("pgd needs autograd: call it outside torch.inference_mode (torch.no_grad is fine)")
    x = check_images(x)
    if builtin and step_fn is None:
        y = check_labels(y, x.shape[0], x.device)
    elif isinstance(y, torch.Tensor) and (y.dim() == 0 or y.shape[0] != x.shape[0]):
        raise UsageError(f"y must have {x.shape[0]} rows to match x; got shape {tuple(y.shape)}")
    if cfg.keep_misclassified and (cfg.targeted or step_fn is not None or not builtin):
        raise UsageError("keep_misclassified needs an untargeted attack on the built-in ce or cw loss")
    path = _alloc_path(cfg.steps, x) if cfg.return_path else None
    if x.shape[0] == 0:
        if path is not None:
            return AttackResult(x_adv=path[-1], path=path)
        return AttackResult(x_adv=x.clone(), path=None)

    with torch.no_grad():
        lower = upper = None
        if cfg.norm == "linf":
            lower = (x - cfg.eps).clamp_(min=0.0)
            upper = (x + cfg.eps).clamp_(max=1.0)
        x_adv = _initial_point(x, cfg, lower, upper, generator, x_init)
    objective = step_fn or _LossObjective(compiled_forward(model) if cfg.compiled else model, loss_fn, y,
                                          cfg.keep_misclassified)
    with frozen_parameters(model):
        x_adv = _iterate(x, x_adv, cfg, objective, lower, upper, path)
    final = path[-1] if path is not None else x_adv
    if isinstance(objective, _LossObjective) and objective.fooled is not None:
        fooled, fooled_at = objective.fooled, objective.fooled_at
        first = torch.where(fooled.view(-1, *([1] * (x.dim() - 1))), fooled_at, final)
        return AttackResult(x_adv=final, path=path, misclassified=fooled, first_misclassified=first)
    return AttackResult(x_adv=final, path=path)


def _initial_point(x: torch.Tensor, cfg: PGDConfig, lower: torch.Tensor | None, upper: torch.Tensor | None,
                   generator: torch.Generator | None, x_init: torch.Tensor | None) -> torch.Tensor:
    """x_0: ``x_init`` projected onto the ball and [0, 1], else drawn as ``cfg.start`` says."""
    if x_init is None:
        return _start(x, cfg.start, cfg.norm, cfg.eps, lower, upper, generator)
    if x_init.shape != x.shape:
        raise UsageError(f"x_init must be shaped like x {tuple(x.shape)}; got {tuple(x_init.shape)}")
    x_adv = x_init.detach().to(device=x.device, dtype=x.dtype).clone()
    return x_adv.clamp_(lower, upper) if cfg.norm == "linf" else _project_l2(x_adv, x, cfg.eps)


class _LossObjective:
    """``loss(model(x'), y)``; with ``keep``, also the first iterate each sample was misclassified at (from the
    forward value the gradient needs anyway)."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], loss_fn: LossFn, y: torch.Tensor,
                 keep: bool) -> None:
        self.forward, self.loss_fn, self.y = forward, loss_fn, y
        self.fooled: torch.Tensor | None = None
        self.fooled_at: torch.Tensor | None = None
        self.keep = keep

    def __call__(self, x_adv: torch.Tensor) -> torch.Tensor:
        logits = self.forward(x_adv)
        if self.keep:
            with torch.no_grad():
                if self.fooled is None:
                    self.fooled = torch.zeros(x_adv.shape[0], dtype=torch.bool, device=x_adv.device)
                    self.fooled_at = torch.empty_like(x_adv)
                new = (predicted_class(logits.detach()) != self.y) & ~self.fooled
                self.fooled_at[new] = x_adv.detach()[new]
                self.fooled |= new
        return self.loss_fn(logits, self.y)


def _iterate(x: torch.Tensor, x_adv: torch.Tensor, cfg: PGDConfig, objective: Callable[[torch.Tensor], torch.Tensor],
             lower: torch.Tensor | None, upper: torch.Tensor | None, path: torch.Tensor | None) -> torch.Tensor:
    """``cfg.steps`` projected (signed, for L-inf) gradient steps from ``x_adv``; each iterate into ``path``."""
    step = -cfg.alpha if cfg.targeted else cfg.alpha
    for k in range(cfg.steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            value = objective(x_adv)
            if value.dim() > 0:
                value = value.sum()
            if value.requires_grad:
                (grad,) = torch.autograd.grad(value, x_adv)
            else:  # the model's output does not depend differentiably on its input: no direction to take
                grad = torch.zeros_like(x_adv)
        with torch.no_grad():
            if grad.dtype in (torch.float16, torch.bfloat16):
                grad = grad.float()
            if cfg.norm == "linf":
                x_new = torch.sign(grad).mul_(step).add_(x_adv.detach())
                x_new = x_new.clamp_(lower, upper)
            else:
                g = grad / _flat_norm(grad).clamp_min(1e-12)
                x_new = _project_l2(g.mul_(step).add_(x_adv.detach()), x, cfg.eps)
            if x_new.dtype != x.dtype:
                x_new = x_new.to(x.dtype)
            if path is not None:
                path[k].copy_(x_new)
        x_adv = x_new
    return x_adv


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015, "Explaining and Harnessing Adversarial Examples").

    One step x + eps * sign(grad CE(S(x), y)) from x itself, clipped to [0, 1].

    Args:
        model: the attacked classifier (inputs in [0, 1], logits out).
        x: (N, C, H, W) images in [0, 1].
        y: (N,) labels.
        eps: L-inf radius in (0, 1].

    Returns:
        The adversarial images.
    """
    return pgd(model, x, y, eps=eps, alpha=eps, steps=1, norm="linf", start="zero", loss="ce").x_adv


def cw_inf(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    alpha: float = 2 / 255,
    steps: int = 30,
    start: str = "random",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """CW-inf: L-inf PGD on the CW margin loss (Carlini & Wagner 2017; PGD-30 as in the TRADES/RSLAD
    evaluation code).

    Args:
        model: the attacked classifier (inputs in [0, 1], logits out).
        x: (N, C, H, W) images in [0, 1].
        y: (N,) labels.
        eps: L-inf radius in (0, 1].
        alpha: step size.
        steps: number of steps.
        start: "random", "zero" or "gaussian" (see :func:`pgd`).
        generator: RNG for the start.

    Returns:
        The adversarial images.
    """
    return pgd(
        model,
        x,
        y,
        eps=eps,
        alpha=alpha,
        steps=steps,
        norm="linf",
        start=start,
        loss="cw",
        generator=generator,
    ).x_adv
