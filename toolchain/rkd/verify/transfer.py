"""Transfer in ``rkd verify``: the float reference's adversarial examples, run on the engine. It needs no
gradient through the engine, so it catches what a weak surrogate misses."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rkd.attacks.predictions import predicted_class
from rkd.verify.attack_spec import AttackSpec
from rkd.verify.checks import TRANSFER
from rkd.verify.outcome import AttackOutcome, RobustnessResult
from rkd.verify.state import VerifyState
from rkd.verify.suite import evaluate_robustness


def engine_classes(runtime: Any, x: torch.Tensor) -> torch.Tensor:
    """The engine's top-1 classes on ``x`` (CPU)."""
    return predicted_class(runtime.predict(x)).cpu()


def transfer_outcome(
    runtime: Any, reference: RobustnessResult, engine_clean: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
    errors: tuple[torch.Tensor, RobustnessResult] | None = None,
) -> AttackOutcome:
    """The engine on every adversarial example of the reference's attacks.

    The reference's suite attacks only what it classifies right; ``errors`` = (indices, result) holds the same
    attacks run by the reference from the samples it gets wrong (``attack_errors``), so that the engine-correct
    ones among them have transfer examples too. Engine-correct samples left without any example (e.g. when the
    suite has no FGSM/PGD/CW) count as robust here and ``details["not_covered"]`` says how many there are (the
    white-box and Square rows still attack them).
    """
    t0 = time.perf_counter()
    correct = engine_clean.clone()
    per_source: dict[str, int] = {}
    x_adv = x.clone()
    ref_clean = reference.outcomes["clean"].correct
    covered_any = ref_clean.clone()
    for name, outcome in reference.outcomes.items():
        if name == "clean" or outcome.x_adv is None:
            continue
        examples, covered = outcome.x_adv, ref_clean
        extra = errors[1].outcomes.get(name) if errors is not None else None
        if errors is not None and extra is not None and extra.x_adv is not None:
            examples, covered = examples.clone(), ref_clean.clone()
            examples[errors[0]] = extra.x_adv
            covered[errors[0]] = True
        covered_any |= covered
        todo = (engine_clean & covered).nonzero().flatten()
        if not len(todo):
            continue
        ok = engine_classes(runtime, examples[todo]) == y[todo]
        broken = todo[~ok & correct[todo]]
        x_adv[broken] = examples[broken]
        correct[todo] &= ok
        per_source[name] = int((~ok).sum())
    details = {"sources": sorted(per_source), "broken_by_source": per_source,
               "from_reference_errors": int((engine_clean & ~ref_clean & covered_any).sum()),
               "not_covered": int((engine_clean & ~covered_any).sum()),
               "note": "adversarial examples of the float reference's attacks, run on the engine"}
    return AttackOutcome(TRANSFER, correct, time.perf_counter() - t0, details, x_adv)


def run_transfer(runtime: Any, reference_model: nn.Module, reference: RobustnessResult, engine: RobustnessResult,
                 x: torch.Tensor, y: torch.Tensor, specs: Sequence[AttackSpec], state: VerifyState,
                 **suite_kw: Any) -> AttackOutcome:
    """The transfer row (resumed from ``state`` when measured before): the reference's examples, plus the same
    gradient attacks run by the reference from the samples only the engine gets right."""
    outcome = state.load("engine", [TRANSFER]).get(TRANSFER)
    if outcome is not None:
        return outcome
    t0 = time.perf_counter()
    engine_clean = engine.outcomes["clean"].correct
    gap = (engine_clean & ~reference.outcomes["clean"].correct).nonzero().flatten()
    gap_specs = [s for s in specs if s.kind in ("fgsm", "pgd", "cw")]
    errors = None
    if len(gap) and gap_specs:  # transfer examples for what the engine gets right and the reference not
        errors = (gap, evaluate_robustness(reference_model, x[gap], y[gap], attacks=gap_specs, attack_errors=True,
                                           **suite_kw))
    outcome = transfer_outcome(runtime, reference, engine_clean, x, y, errors)
    outcome.seconds = time.perf_counter() - t0
    state.save("engine", outcome)
    return outcome
