"""How far a verify run's numbers can be trusted, in the spirit of AutoAttack's own checks (Croce & Hein 2020):
engine/surrogate top-1 agreement on clean and adversarial inputs, input gradients that are zero or not finite
(gradient masking), and the warnings drawn from them and from the attacks' outcomes (Square or transfer
breaking what the gradient attacks could not).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rkd.attacks.predictions import batched_logits, logit_agreement
from rkd.verify.attack_spec import AttackSpec
from rkd.verify.checks import TRANSFER
from rkd.verify.outcome import RobustnessResult
from rkd.verify.request import VerifyRequest
from rkd.verify.target import VerifyTarget
from rkd.verify.transfer import engine_classes


@dataclass
class Diagnostics:
    """The trust checks of one run: ``agreement`` (``{"clean", "adversarial"}``, each a
    :func:`~rkd.attacks.predictions.logit_agreement` record or None), and how many of the ``attacked``
    clean-correct samples have a zero or non-finite input gradient through the surrogate."""

    agreement: dict[str, Any]
    zero_gradients: int
    attacked: int


def agreement(surrogate: nn.Module, runtime: Any, x: torch.Tensor, batch_size: int) -> dict[str, Any] | None:
    """Top-1 agreement and logit difference of surrogate and engine on ``x``."""
    if len(x) == 0:
        return None
    return logit_agreement(batched_logits(surrogate, x, batch_size), runtime.predict(x))


def perturbed(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The rows of ``x_adv`` an attack moved: AutoAttack leaves ``x`` where it did not run or found nothing, and
    clean inputs would pull the adversarial agreement towards the clean one."""
    return x_adv[(x_adv != x).flatten(1).any(1)]


def zero_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, dev: torch.device) -> int:
    """Samples whose cross-entropy input gradient through ``model`` is exactly zero (AutoAttack's check) or not
    finite (an attack's sign step cannot use it either)."""
    zeros = 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(dev).requires_grad_(True)
        loss = nn.functional.cross_entropy(model(xb), y[i:i + batch_size].to(dev), reduction="sum")
        if not loss.requires_grad:  # no differentiable path from the input at all
            zeros += len(xb)
            continue
        (grad,) = torch.autograd.grad(loss, xb)
        flat = grad.flatten(1)
        zeros += int(((flat.abs().amax(1) == 0) | ~torch.isfinite(flat).all(1)).sum())
    return zeros


def diagnose(target: VerifyTarget, engine_model: nn.Module, engine: RobustnessResult, specs: Sequence[AttackSpec],
             x: torch.Tensor, y: torch.Tensor, batch_size: int, dev: torch.device) -> Diagnostics:
    """Agreement on the clean inputs and on the gradient attacks' perturbed inputs, and the zero-gradient count
    on the engine's clean-correct samples."""
    attacked = engine.outcomes["clean"].correct.nonzero().flatten()
    if target.surrogate is None:  # black-box only: nothing to compare with the engine, no gradients to check
        return Diagnostics({"clean": None, "adversarial": None}, 0, 0)
    adv = [perturbed(o.x_adv[attacked], x[attacked]) for s in specs if s.kind != "clean" and s.uses_gradients
           for o in [engine.outcomes[s.name]] if o.x_adv is not None]
    adv = [a for a in adv if len(a)]
    agree = {
        "clean": agreement(target.surrogate, target.runtime, x, batch_size),
        "adversarial": agreement(target.surrogate, target.runtime, torch.cat(adv), batch_size) if adv else None,
    }
    zeros = zero_gradients(engine_model, x[attacked], y[attacked], batch_size, dev) if len(attacked) else 0
    return Diagnostics(agree, zeros, len(attacked))


def warnings(target: VerifyTarget, engine: RobustnessResult, specs: Sequence[AttackSpec], diagnostics: Diagnostics,
             request: VerifyRequest, *, num_classes: int | None = None) -> list[str]:
    """The run's warnings: the artifact's and the suite's, a threat model other than the bundle's, Square or
    transfer breaking what the gradient attacks did not, AutoAttack's own messages, zero gradients and low
    agreement (below the request's thresholds), and a clean accuracy at chance level (of ``num_classes``).
    Deduplicated, in that order."""
    eps, norm = float(request.eps or 0.0), request.norm or "linf"
    out = list(target.warnings) + list(engine.warnings)
    tm = target.threat_model
    if tm and (tm.get("norm") != norm or abs(float(tm.get("eps", eps)) - eps) > 1e-9):
        out.append(f"threat model differs from the bundle's ({tm.get('norm')} eps={float(tm.get('eps', eps)):.5g}): "
                   f"verifying {norm} eps={eps:.5g}")
    gradient = engine.outcomes["clean"].correct.clone()  # robust to every gradient attack (none: clean-correct)
    for spec in specs:
        if spec.kind != "clean" and spec.uses_gradients and spec.name in engine.outcomes:
            gradient &= engine.outcomes[spec.name].correct
    for spec in specs:
        outcome = engine.outcomes.get(spec.name)
        if outcome is None or spec.kind != "autoattack":
            continue
        by_square = int((outcome.details.get("broken_by") or {}).get("square", 0))
        if not spec.uses_gradients:
            by_square = int((gradient & ~outcome.correct).sum())
        if by_square:
            out.append(f"Square (no gradients) broke {by_square} sample(s) the gradient attacks did not: gradient "
                       "masking or a weak surrogate; the gradient-attack numbers overstate robustness")
        for msg in outcome.details.get("messages") or []:
            out.append(f"AutoAttack: {msg}")
    transfer = engine.outcomes.get(TRANSFER)
    if transfer is not None:
        extra = int((gradient & ~transfer.correct).sum())
        if extra:
            out.append(f"transfer from the float model broke {extra} sample(s) the white-box attacks on the engine did "
                       "not: the surrogate's gradients are weaker than the float model's")
    clean = engine.outcomes["clean"].correct
    classes = num_classes or 0
    if classes >= 2 and len(clean) >= 20 and float(clean.float().mean()) <= 1.5 / classes:
        out.append(f"clean accuracy {float(clean.float().mean()):.1%} is at chance level (1/{classes}): the model does "
                   "not classify these images; check --data and, for a model rkd did not make, how it wants its "
                   "input (--mean/--std, --pixel-scale, --layout, --channels, --input-size)")
    if diagnostics.zero_gradients:
        out.append(f"zero or non-finite input gradient through the surrogate on {diagnostics.zero_gradients} of "
                   f"{diagnostics.attacked} clean-correct samples: gradient attacks cannot move them (gradient "
                   "masking); trust Square and transfer there")
    clean_agree = (diagnostics.agreement.get("clean") or {}).get("top1_agreement")
    if clean_agree is not None and clean_agree < request.min_clean_agreement:
        out.append(f"engine/surrogate top-1 agreement on clean inputs is {clean_agree:.1%} "
                   f"(< {request.min_clean_agreement:.0%}): the surrogate does not replicate the engine")
    adv_agree = (diagnostics.agreement.get("adversarial") or {}).get("top1_agreement")
    if adv_agree is not None and adv_agree < request.min_adversarial_agreement:
        out.append(f"engine/surrogate top-1 agreement on adversarial inputs is {adv_agree:.1%} "
                   f"(< {request.min_adversarial_agreement:.0%}): gradients may point the wrong way near the boundary")
    return list(dict.fromkeys(out))


def white_box_record(target: VerifyTarget, specs: Sequence[AttackSpec]) -> dict[str, Any]:
    """The report's ``white_box``: whether a white-box attack ran, through what, and why not when none did."""
    asked = [s.name for s in specs if s.kind != "clean" and s.uses_gradients]
    ran = bool(asked) and target.surrogate is not None
    why = None
    if not ran:
        why = (f"no gradients: {target.info['surrogate'].get('note')}" if target.surrogate is None else
               "the suite has no white-box attack")
    return {"ran": ran, "attacks": asked if ran else [], "gradients_from": target.info["surrogate"].get("kind"),
            "gradient_rules": target.info["surrogate"].get("gradients"), "why_not": why}


def unreliable_reasons(diagnostics: Diagnostics, specs: Sequence[AttackSpec], request: VerifyRequest, *,
                       white_box: bool = True) -> list[str]:
    """Why the numbers cannot be trusted: no white-box attack ran (black-box attacks alone overstate robustness;
    ``white_box`` False: the target has no surrogate), or, when the suite has no gradient-free attack to fall
    back on (Square, alone or inside AutoAttack), zero or non-finite input gradients on at least
    ``request.max_zero_gradient_share`` of the attacked samples or engine/surrogate agreement below the
    request's thresholds. Empty when the evaluation is reliable."""
    if not white_box or not any(s.kind != "clean" and s.uses_gradients for s in specs):
        return ["no white-box attack ran (black-box attacks alone overstate robustness): a gate cannot pass on "
                "them; give the gradients a source (--reference, --surrogate) or add a gradient attack"]
    if any(s.kind == "autoattack" and "square" in s.subattacks for s in specs):
        return []
    reasons = []
    if diagnostics.attacked and diagnostics.zero_gradients / diagnostics.attacked >= request.max_zero_gradient_share:
        reasons.append(f"zero or non-finite input gradients on {diagnostics.zero_gradients} of "
                       f"{diagnostics.attacked} attacked samples")
    for key, floor in (("clean", request.min_clean_agreement), ("adversarial", request.min_adversarial_agreement)):
        agree = (diagnostics.agreement.get(key) or {}).get("top1_agreement")
        if agree is not None and agree < floor:
            reasons.append(f"engine/surrogate top-1 agreement on {key} inputs {agree:.1%} < {floor:.0%}")
    return reasons


def float_agreement(target: VerifyTarget, x: torch.Tensor, batch_size: int, dev: torch.device) -> torch.Tensor:
    """Per-sample top-1 agreement of the engine and the float reference on clean inputs."""
    if target.reference is None:
        return torch.zeros(0, dtype=torch.bool)
    return engine_classes(target.runtime, x) == batched_logits(target.reference, x, batch_size, dev).argmax(1)
