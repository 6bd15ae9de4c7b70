"""The robustness suite: clean, FGSM, PGD-k, CW-inf and AutoAttack on one fixed set of samples.

Protocol (METHOD.md, "Evaluation protocol"): model in eval mode, inputs in [0,1], normalisation inside the model.
Every attack runs only on the samples the model classifies correctly on the clean input; a clean error counts
as non-robust under every attack (AutoAttack's convention). A sample is robust in the worst case only if it is
classified correctly on the clean input and on every attack's output. Each accuracy carries a 95% Wilson
interval.

The parts live in their own modules: attack names and pre-flight checks in :mod:`rkd.verify.attack_spec`, one
runner per attack kind in :mod:`rkd.verify.runners`, the measured outcomes in :mod:`rkd.verify.outcome`; this
module runs them in order. The protocol choices (step, norm, batching, seeding, which samples AutoAttack sees,
path scoring, AutoAttack's state file) are one :class:`SuiteOptions`; :func:`evaluate_robustness` also takes them
as keywords.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rkd.attacks.predictions import NO_CLASS, batched_classes
from rkd.errors import UsageError
from rkd.progress import WorkProgress, reporting
from rkd.verify.attack_spec import (  # noqa: F401  (re-exported: the suite's public names)
    AA_SUBATTACKS,
    MAX_RESTARTS,
    MAX_SEED,
    MAX_STEPS,
    AttackSpec,
    check_seed,
    check_suite,
    parse_attacks,
)
from rkd.verify.outcome import AttackOutcome, RobustnessResult
from rkd.verify.runners import RUNNERS, SuiteRun, autoattack_state_paths, random_starts  # noqa: F401

__all__ = ["AttackOutcome", "AttackSpec", "RobustnessResult", "check_seed", "check_suite", "class_counts",
           "class_coverage_warning", "evaluate_robustness", "SuiteOptions", "parse_attacks", "predict_correct",
           "random_starts"]


def predict_correct(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Per-sample top-1 correctness (bool, CPU) of ``model`` on ``x`` (kept on CPU, moved per batch)."""
    return batched_classes(model, x, batch_size, device) == y.cpu()


def class_counts(pred: torch.Tensor, y: torch.Tensor) -> list[int]:
    """How often each class is predicted (length: the largest class index in ``pred`` or ``y``, plus one); rows
    without a prediction (non-finite logits, ``NO_CLASS``) are not counted."""
    pred = pred[pred != NO_CLASS]
    size = int(max(int(pred.max()) if pred.numel() else 0, int(y.max()) if y.numel() else 0)) + 1
    return torch.bincount(pred.cpu().long(), minlength=size).tolist()


def class_coverage_warning(predicted: list[int], y: torch.Tensor, *, min_support: int = 5,
                           max_ratio: float = 3.0) -> str | None:
    """A warning when the clean predictions collapse onto a few classes, else None.

    A classifier that predicts one class for most inputs keeps that class's samples under any attack, so its
    robust accuracy looks like robustness without being any. Flags classes with at least ``min_support`` test
    samples that are never predicted, and a class predicted more than ``max_ratio`` times as often as it occurs
    (and for more than 20% of the inputs).
    """
    n = int(y.numel())
    if n == 0 or not predicted:
        return None
    support = torch.bincount(y.cpu().long(), minlength=len(predicted)).tolist()
    pred = list(predicted) + [0] * (len(support) - len(predicted))
    never = [c for c, (k, s) in enumerate(zip(pred, support, strict=True)) if s >= min_support and k == 0]
    top = max(range(len(pred)), key=lambda c: pred[c])
    share, expected = pred[top] / n, support[top] / n
    parts = []
    if never:
        parts.append(f"never predicts class{'es' if len(never) > 1 else ''} {', '.join(map(str, never))}")
    if share > 0.2 and share > max_ratio * expected:
        parts.append(f"predicts class {top} for {share:.0%} of the inputs ({expected:.0%} of the labels)")
    if not parts:
        return None
    used = sum(1 for k in pred if k)
    return (f"the model {' and '.join(parts)} ({used} of {len(support)} classes used on clean inputs): the robust "
            "accuracy of a model that ignores classes or favours one overstates its robustness; train longer or "
            "check the data")


@dataclass(frozen=True)
class SuiteOptions:
    """How the suite attacks (:func:`evaluate_robustness`'s settings besides the attacks and eps).

    Attributes:
        alpha: the PGD/CW step on [0,1] inputs.
        norm: ``"linf"`` or ``"l2"``.
        batch_size: samples per model call (AutoAttack's chunks too).
        device: where the batches go (the samples stay on CPU).
        seed: seeds every attack's random start (per attack and restart, per sample, independent of order
            and batching: :func:`random_starts`).
        keep_adv: keep every attack's adversarial examples (``AttackOutcome.x_adv``, on CPU).
        autoattack_on: ``"clean"`` (AutoAttack on every clean-correct sample: its own protocol, so its
            accuracy alone is comparable to RobustBench) or ``"robust"`` (only on samples still robust after
            the cheaper attacks listed before it: the same worst case for less work, but then
            ``autoattack``'s own row is the cumulative accuracy, and its details say so).
        attack_errors: also run FGSM, PGD and CW from the samples the model gets wrong on the clean input, to
            have their adversarial examples (``keep_adv``) for transfer to another model; they still count as
            non-robust. AutoAttack skips them either way.
        score_every_iterate: FGSM, PGD and CW count a sample as broken when the model misclassified any of
            their iterates (re-scored on the model), not only the last: the per-sample worst case over the path
            (``rkd verify``; an engine attacked through a surrogate's gradients can pass through a fooling point
            and leave it). ``x_adv`` is then the final iterate where it fools, else the first fooling one.
            Off: the literature's protocol (the final iterate), as ``rkd eval`` reports it.
        autoattack_state: rkd's resumable AutoAttack state file (a killed run continues where it stopped).
    """

    alpha: float = 2 / 255
    norm: str = "linf"
    batch_size: int = 256
    device: str | torch.device = "cpu"
    seed: int = 0
    keep_adv: bool = False
    autoattack_on: str = "clean"
    attack_errors: bool = False
    score_every_iterate: bool = False
    autoattack_state: str | Path | None = None

    @classmethod
    def of(cls, settings: Mapping[str, Any]) -> SuiteOptions:
        """Options from keyword settings; an unknown name is a UsageError listing the known ones."""
        unknown = sorted(set(settings) - {f.name for f in fields(cls)})
        if unknown:
            raise UsageError(f"evaluate_robustness got unknown setting(s) {', '.join(unknown)}; known: "
                             f"{', '.join(f.name for f in fields(cls))}")
        return cls(**settings)


def evaluate_robustness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attacks: list[AttackSpec] | str,
    eps: float,
    options: SuiteOptions | None = None,
    done: Mapping[str, AttackOutcome] | None = None,
    on_outcome: Callable[[AttackOutcome], None] | None = None,
    log: Callable[[str], None] | None = None,
    progress: WorkProgress | None = None,
    **settings: Any,
) -> RobustnessResult:
    """Run the suite on ``(x, y)`` (float NCHW in [0,1], int64 labels; kept on CPU, moved per batch).

    Args:
        model: a classifier taking [0,1] inputs; put in eval mode here and left so.
        attacks: specs from :func:`parse_attacks` or their comma-separated names.
        eps: attack radius (L-inf or L2) on [0,1] inputs.
        options: the :class:`SuiteOptions`; or give its fields as keywords (``settings``: ``alpha=``,
            ``seed=``, ``keep_adv=``, ...), not both.
        done: outcomes already measured (a resumed run): reused, not recomputed.
        on_outcome: called with each newly measured outcome (to save it).
        log: receives one line per finished attack.
        progress: receives each attack's progress (samples done, robust so far; :mod:`rkd.progress`); default:
            the sink installed with :func:`rkd.progress.reporting`, if any.
    """
    if options is not None and settings:
        raise UsageError("evaluate_robustness takes options= or keyword settings, not both")
    opts = options or SuiteOptions.of(settings)
    _check_threat(eps, opts)
    specs = parse_attacks(attacks) if isinstance(attacks, str) else attacks
    done = done or {}
    check_suite([s for s in specs if s.name not in done], seed=opts.seed)
    dev = torch.device(opts.device)
    model.eval()
    outcomes = {"clean": done["clean"] if "clean" in done else _clean_outcome(model, x, y, opts.batch_size, dev,
                                                                              opts.keep_adv)}
    if "clean" not in done and on_outcome is not None:
        on_outcome(outcomes["clean"])
    clean = outcomes["clean"].correct
    run = SuiteRun(model=model, x=x, y=y, eps=eps, alpha=opts.alpha, norm=opts.norm, batch_size=opts.batch_size,
                   seed=opts.seed, device=dev, clean=clean,
                   idx=torch.arange(len(x)) if opts.attack_errors else clean.nonzero().flatten(),
                   robust_so_far=clean.clone(), keep_adv=opts.keep_adv, autoattack_on=opts.autoattack_on,
                   # from a wrong sample, x_0 already "fools": no path scoring with attack_errors
                   along_path=opts.score_every_iterate and not opts.attack_errors,
                   aa_states=autoattack_state_paths(opts.autoattack_state,
                                                    [s.name for s in specs if s.kind == "autoattack"]),
                   log=log)
    with reporting(progress):
        for spec in specs:
            if spec.kind != "clean":
                outcomes[spec.name] = done[spec.name] if spec.name in done else _measure(run, spec, on_outcome, log)
                run.robust_so_far &= outcomes[spec.name].correct
    return RobustnessResult(outcomes=outcomes, eps=eps, norm=opts.norm, seed=opts.seed, n=len(x),
                            warnings=_suite_warnings(outcomes, y), labels=y.cpu())


def _check_threat(eps: float, opts: SuiteOptions) -> None:
    """eps in (0, 1] for L-inf, positive and finite; ``autoattack_on`` one of its two values."""
    if opts.norm == "linf" and not 0.0 < eps <= 1.0:
        raise UsageError(f"eps must be in (0, 1] on [0,1] inputs, got {eps:g} (write e.g. 8/255)")
    if not (math.isfinite(eps) and eps > 0.0):
        raise UsageError(f"eps must be positive and finite, got {eps:g}")
    if opts.autoattack_on not in ("clean", "robust"):
        raise UsageError(f"autoattack_on must be 'clean' or 'robust', got {opts.autoattack_on!r}")


def _measure(run: SuiteRun, spec: AttackSpec, on_outcome: Callable[[AttackOutcome], None] | None,
             log: Callable[[str], None] | None) -> AttackOutcome:
    """One attack through its kind's runner (:data:`RUNNERS`), timed, handed to ``on_outcome`` and ``log``."""
    t0 = time.perf_counter()
    correct, details, x_adv = RUNNERS[spec.kind](run, spec)
    outcome = AttackOutcome(spec.name, correct, time.perf_counter() - t0, details, x_adv)
    if on_outcome is not None:
        on_outcome(outcome)
    if log is not None:
        log(f"{spec.name}: {int(correct.sum())}/{len(run.x)} robust ({time.perf_counter() - t0:.1f} s)")
    return outcome


def _clean_outcome(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, dev: torch.device,
                   keep_adv: bool) -> AttackOutcome:
    """Clean correctness, with how often each class is predicted and how many rows had non-finite logits."""
    t0 = time.perf_counter()
    pred = batched_classes(model, x, batch_size, dev)
    return AttackOutcome("clean", pred == y, time.perf_counter() - t0, x_adv=x if keep_adv else None,
                         details={"predicted": class_counts(pred, y), "non_finite": int((pred == NO_CLASS).sum())})


def _suite_warnings(outcomes: Mapping[str, AttackOutcome], y: torch.Tensor) -> list[str]:
    """Collapsed class coverage (:func:`class_coverage_warning`) and non-finite logits under any attack."""
    collapsed = class_coverage_warning(outcomes["clean"].details.get("predicted") or [], y)
    warnings = [collapsed] if collapsed else []
    non_finite = {k: int(o.details.get("non_finite") or 0) for k, o in outcomes.items()}
    if any(non_finite.values()):
        where = ", ".join(f"{k} {v}" for k, v in non_finite.items() if v)
        warnings.append(f"the model returned non-finite logits (NaN/inf) on some inputs ({where}); they count as "
                        "wrong, and the attacks' gradients there are meaningless")
    return warnings
