"""The robustness suite: clean, FGSM, PGD-k, CW-inf and AutoAttack on one fixed set of samples.

Protocol (METHOD.md, "Evaluation protocol"): model in eval mode, inputs in [0,1], normalisation inside the model.
Every attack runs only on the samples the model classifies correctly on the clean input; a clean error counts
as non-robust under every attack (AutoAttack's convention). A sample is robust in the worst case only if it is
classified correctly on the clean input and on every attack's output. Each accuracy carries a 95% Wilson
interval.
"""

from __future__ import annotations

import math
import re
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rkd.attacks.predictions import NO_CLASS, batched_classes, predicted_class
from rkd.errors import UsageError
from rkd.stats import wilson_interval

_SPEC = re.compile(r"^(clean|fgsm|pgd(\d+)(?:r(\d+))?|cw(\d+)?|autoattack|square|aa-custom:([a-z+-]+))$")
AA_SUBATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab")
#: The most steps (``pgdK``, ``cwK``) and restarts (``pgdKrR``) an attack name may ask for: more is a typo, not an
#: evaluation (AutoAttack's APGD takes 100 steps; the literature's strongest PGD runs take 1,000 or so).
MAX_STEPS = 10_000
MAX_RESTARTS = 100
#: Seeds are what torch's generators take: integers in [0, 2**63).
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the suite, parsed from its name: ``clean``, ``fgsm``, ``pgd20``, ``pgd20r5`` (5 random
    restarts), ``cw`` (= ``cw30``), ``autoattack`` (standard), ``square`` (AutoAttack's Square, 5000 queries,
    no gradients) or ``aa-custom:apgd-ce+square`` (a named subset of AutoAttack's attacks)."""

    name: str
    kind: str
    steps: int = 0
    subattacks: tuple[str, ...] = ()
    restarts: int = 1

    @property
    def uses_gradients(self) -> bool:
        """False for attacks that only query the model's outputs (Square)."""
        return not (self.kind == "autoattack" and set(self.subattacks) <= {"square"})


def parse_attacks(text: str | list[str]) -> list[AttackSpec]:
    """Parse ``"clean,fgsm,pgd20,cw,autoattack"``; ``clean`` is always evaluated (added when missing)."""
    names = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not names:
        raise UsageError("the attack list is empty: name at least one, e.g. pgd20,autoattack (or clean for clean "
                         "accuracy alone)")
    specs: list[AttackSpec] = [AttackSpec("clean", "clean")]
    for name in names:
        m = _SPEC.match(name)
        if not m:
            raise UsageError(
                f"unknown attack '{name}': use clean, fgsm, pgdK or pgdKrR (e.g. pgd20, pgd50r5), cw or cwK, "
                "autoattack, square, or aa-custom:apgd-ce+square"
            )
        if name == "clean":
            continue
        if name == "fgsm":
            spec = AttackSpec(name, "fgsm", 1)
        elif name.startswith("pgd"):
            restarts = int(m.group(3) or 1)
            if restarts < 1:
                raise UsageError(f"attack '{name}' needs at least one restart")
            if restarts > MAX_RESTARTS:
                raise UsageError(f"attack '{name}' asks for {restarts} restarts; at most {MAX_RESTARTS}")
            spec = AttackSpec(name, "pgd", _steps(name, m.group(2)), restarts=restarts)
        elif name.startswith("cw"):
            spec = AttackSpec(name, "cw", _steps(name, m.group(4) or "30"))
        elif name == "autoattack":
            spec = AttackSpec(name, "autoattack", subattacks=("apgd-ce", "apgd-t", "fab-t", "square"))
        elif name == "square":
            spec = AttackSpec(name, "autoattack", subattacks=("square",))
        else:
            subs = tuple(s for s in m.group(5).split("+") if s)
            bad = [s for s in subs if s not in AA_SUBATTACKS]
            if bad or not subs:
                raise UsageError(f"unknown AutoAttack attack {bad or subs}: choose from {', '.join(AA_SUBATTACKS)}")
            twice = sorted({s for s in subs if subs.count(s) > 1})
            if twice:
                raise UsageError(f"attack '{name}' names {', '.join(twice)} twice: list each AutoAttack attack once")
            spec = AttackSpec(name, "autoattack", subattacks=subs)
        if spec.steps == 0 and spec.kind in ("pgd", "cw"):
            raise UsageError(f"attack '{name}' needs at least one step")
        if spec not in specs:
            specs.append(spec)
    return specs


def _steps(name: str, digits: str) -> int:
    """The step count in an attack name, refused above :data:`MAX_STEPS` (a count of steps, not a typo'd run)."""
    if len(digits) > len(str(MAX_STEPS)) or int(digits) > MAX_STEPS:
        raise UsageError(f"attack '{name}' asks for {int(digits)} steps; at most {MAX_STEPS:,}")
    return int(digits)


def check_seed(seed: object, option: str = "--seed") -> int:
    """``seed`` as an integer in [0, 2**63) (what every attack, AutoAttack included, can take), else a UsageError."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UsageError(f"{option} must be an integer in [0, 2**63), got {seed!r}")
    return seed


def check_suite(specs: Sequence[AttackSpec], *, seed: object) -> None:
    """What would otherwise fail only once the attacks run, checked before any model call: the seed, and
    pyautoattack for AutoAttack-type attacks (:class:`~rkd.errors.MissingDependencyError`, exit 3)."""
    check_seed(seed)
    kinds = [s.name for s in specs if s.kind == "autoattack"]
    if kinds:
        from rkd.attacks.autoattack import require_pyautoattack

        require_pyautoattack(f"attack '{kinds[0]}'")


@dataclass
class AttackOutcome:
    """Per-sample correctness under one attack (``correct[i]``: sample i classified right after it)."""

    name: str
    correct: torch.Tensor
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    x_adv: torch.Tensor | None = None  # (n, ...) with ``keep_adv``: x itself where nothing was attacked

    def summary(self) -> dict[str, Any]:
        """Accuracy, count, n and 95% Wilson interval as plain numbers."""
        k, n = int(self.correct.sum()), int(self.correct.numel())
        lo, hi = wilson_interval(k, n)
        return {"acc": k / n if n else 0.0, "correct": k, "n": n, "ci95": [lo, hi], "seconds": self.seconds}


@dataclass
class RobustnessResult:
    """Everything one suite run measured on one set of samples."""

    outcomes: dict[str, AttackOutcome]
    eps: float
    norm: str
    seed: int
    n: int
    warnings: list[str] = field(default_factory=list)
    labels: torch.Tensor | None = None  # the samples' true classes (for :meth:`by_class`)

    @property
    def worst_case(self) -> torch.Tensor:
        """Per-sample robustness: right on the clean input and under every attack."""
        acc = torch.ones(self.n, dtype=torch.bool)
        for outcome in self.outcomes.values():
            acc &= outcome.correct
        return acc

    def accuracy(self, name: str) -> float:
        """Accuracy under one attack (``"worst_case"`` for the per-sample worst case)."""
        if name == "worst_case":
            return float(self.worst_case.float().mean()) if self.n else 0.0
        return float(self.outcomes[name].correct.float().mean()) if self.n else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers with RobustBench's names (``clean_acc``, ``autoattack_acc``, ``eps``)."""
        attacks = {name: o.summary() | ({"details": o.details} if o.details else {}) for name, o in self.outcomes.items()}
        worst = self.worst_case
        k = int(worst.sum())
        lo, hi = wilson_interval(k, self.n)
        out: dict[str, Any] = {
            "eps": self.eps,
            "norm": self.norm,
            "n": self.n,
            "seed": self.seed,
            "clean_acc": attacks["clean"]["acc"],
            "robust_acc": k / self.n if self.n else 0.0,
            "attacks": attacks,
            "worst_case": {"acc": k / self.n if self.n else 0.0, "correct": k, "n": self.n, "ci95": [lo, hi]},
            "per_sample": {name: o.correct.int().tolist() for name, o in self.outcomes.items()},
            "warnings": list(self.warnings),
        }
        if "autoattack" in self.outcomes:
            out["autoattack_acc"] = attacks["autoattack"]["acc"]
        return out

    def by_class(self, classes: Sequence[str] | None = None) -> dict[str, Any]:
        """Accuracy per true class under every attack and in the worst case (RobustBench-style class-wise
        robustness), with each class's support and clean prediction count.

        ``without_most_predicted`` is each accuracy over the samples whose label is not the class predicted
        most on clean inputs: a model that favours a class keeps that class's samples under any attack
        (:func:`class_coverage_warning`), and this is its accuracy without them. Classes with no sample get
        None. Needs ``labels``; ``classes`` (the data set's class names) names the classes and pads the lists
        to all of them.
        """
        if self.labels is None:
            raise ValueError("by_class needs the samples' labels (RobustnessResult.labels)")
        y = self.labels.cpu().long()
        predicted = list(self.outcomes["clean"].details.get("predicted") or [])
        size = max(len(predicted), int(y.max()) + 1 if y.numel() else 0, len(classes or ()))
        support = torch.bincount(y, minlength=size).tolist()
        predicted += [0] * (size - len(predicted))
        top = max(range(size), key=lambda c: predicted[c]) if size else 0
        rest = y != top
        flags = {name: o.correct for name, o in self.outcomes.items()} | {"worst_case": self.worst_case}

        def per_class(ok: torch.Tensor) -> list[float | None]:
            hits = torch.bincount(y[ok], minlength=size).tolist()
            return [h / s if s else None for h, s in zip(hits, support, strict=True)]

        return {
            "classes": [str(c) for c in classes] if classes else [str(c) for c in range(size)],
            "support": support,
            "predicted": predicted,
            "acc": {name: per_class(ok.cpu()) for name, ok in flags.items()},
            "most_predicted": top,
            "without_most_predicted": {
                name: float(ok.cpu()[rest].float().mean()) if bool(rest.any()) else None for name, ok in flags.items()
            },
        }


def autoattack_state_paths(path: str | Path | None, names: Sequence[str]) -> dict[str, Path]:
    """One AutoAttack state file per AutoAttack-type attack: ``path`` for the first, and beside it
    ``<stem>.<name><suffix>`` for each further one (one file cannot hold two attack sets)."""
    if path is None:
        return {}
    path = Path(path)
    out = {}
    for i, name in enumerate(names):
        safe = re.sub(r"[^a-zA-Z0-9_.-]+", "_", name)
        out[name] = path if i == 0 else path.with_name(f"{path.stem}.{safe}{path.suffix}")
    return out


def _earlier_fooling_iterates(
    model: nn.Module, misclassified: torch.Tensor, first: torch.Tensor, x_adv: torch.Tensor, ok: torch.Tensor,
    y: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Where the final iterate is still classified right (``ok``) but an earlier one was not, re-score that
    earlier iterate on the model and, when it fools it again, make it the sample's adversarial example."""
    sel = (misclassified.cpu() & ok).nonzero().flatten()
    if not len(sel):
        return x_adv, ok, 0
    with torch.inference_mode():
        pred = predicted_class(model(first[sel.to(first.device)])).cpu()
    take = sel[pred != y.cpu()[sel]]
    if len(take):
        x_adv, ok = x_adv.clone(), ok.clone()
        x_adv[take.to(x_adv.device)] = first[take.to(first.device)].to(x_adv.dtype)
        ok[take] = False
    return x_adv, ok, int(len(take))


def _attack_seed(seed: int, name: str) -> int:
    """A per-attack seed, independent of the order attacks run in."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


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


def random_starts(x: torch.Tensor, eps: float, norm: str, seed: int) -> torch.Tensor | None:
    """Seeded L-inf random starts for all n samples at once (uniform in the eps-ball, clipped to [0, 1]).

    Drawn for the whole set, then indexed, so a sample's start does not depend on which other samples share
    its batch or which were attacked before: a cascade over still-robust points, a resumed run and a
    different batch size all give the same per-sample result. None for L2 (the attack draws its own).
    """
    if norm != "linf":
        return None
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(x.shape, generator=gen, dtype=torch.float32).mul_(2 * eps).sub_(eps)
    return (x.float() + noise).clamp_(0.0, 1.0)


def evaluate_robustness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attacks: list[AttackSpec] | str,
    eps: float,
    alpha: float = 2 / 255,
    norm: str = "linf",
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
    autoattack_state: str | Path | None = None,
    keep_adv: bool = False,
    autoattack_on: str = "clean",
    attack_errors: bool = False,
    score_every_iterate: bool = False,
    done: Mapping[str, AttackOutcome] | None = None,
    on_outcome: Callable[[AttackOutcome], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> RobustnessResult:
    """Run the suite on ``(x, y)`` (float NCHW in [0,1], int64 labels; kept on CPU, moved per batch).

    Args:
        model: a classifier taking [0,1] inputs; put in eval mode here and left so.
        attacks: specs from :func:`parse_attacks` or their comma-separated names.
        eps: attack radius (L-inf or L2) on [0,1] inputs; ``alpha`` the PGD/CW step.
        seed: seeds every attack's random start (per attack and restart, per sample, independent of order
            and batching: :func:`random_starts`).
        autoattack_state: rkd's resumable AutoAttack state file (a killed run continues where it stopped).
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
        done: outcomes already measured (a resumed run): reused, not recomputed.
        on_outcome: called with each newly measured outcome (to save it).
        log: receives one line per finished attack.
    """
    from rkd.attacks import run_autoattack
    from rkd.attacks.pgd import pgd

    if norm == "linf" and not 0.0 < eps <= 1.0:
        raise UsageError(f"eps must be in (0, 1] on [0,1] inputs, got {eps:g} (write e.g. 8/255)")
    if not (math.isfinite(eps) and eps > 0.0):
        raise UsageError(f"eps must be positive and finite, got {eps:g}")
    if autoattack_on not in ("clean", "robust"):
        raise UsageError(f"autoattack_on must be 'clean' or 'robust', got {autoattack_on!r}")
    specs = parse_attacks(attacks) if isinstance(attacks, str) else attacks
    check_suite([s for s in specs if s.name not in (done or {})], seed=seed)
    dev = torch.device(device)
    model.eval()
    n = len(x)
    outcomes: dict[str, AttackOutcome] = {}
    done = done or {}
    t0 = time.perf_counter()
    if "clean" in done:
        outcomes["clean"] = done["clean"]
    else:
        pred = batched_classes(model, x, batch_size, dev)
        clean = pred == y
        outcomes["clean"] = AttackOutcome("clean", clean, time.perf_counter() - t0, x_adv=x if keep_adv else None,
                                          details={"predicted": class_counts(pred, y),
                                                   "non_finite": int((pred == NO_CLASS).sum())})
        if on_outcome is not None:
            on_outcome(outcomes["clean"])
    clean = outcomes["clean"].correct
    idx = torch.arange(n) if attack_errors else clean.nonzero().flatten()  # attack only what it gets right
    robust_so_far = clean.clone()
    aa_states = autoattack_state_paths(autoattack_state, [s.name for s in specs if s.kind == "autoattack"])
    along_path = score_every_iterate and not attack_errors  # from a wrong sample, x_0 already "fools"
    for spec in specs:
        if spec.kind == "clean":
            continue
        if spec.name in done:
            outcomes[spec.name] = done[spec.name]
            robust_so_far &= done[spec.name].correct
            continue
        t0 = time.perf_counter()
        correct = torch.zeros(n, dtype=torch.bool)
        details: dict[str, Any] = {}
        x_adv_all = x.clone() if keep_adv else None
        if spec.kind == "autoattack":
            version = "standard" if spec.name == "autoattack" else "custom"
            target = robust_so_far.nonzero().flatten() if autoattack_on == "robust" else idx
            target = target[clean[target]]
            if len(target):
                res = run_autoattack(
                    model, x[target].contiguous(), y[target], eps=eps, norm="Linf" if norm == "linf" else "L2",
                    version=version, attacks=None if version == "standard" else list(spec.subattacks),
                    batch_size=batch_size, seed=seed, device=dev, state_path=aa_states.get(spec.name), log=log,
                )
                correct[target] = res.robust.cpu()
                details = _autoattack_details(res, target, n)
                if x_adv_all is not None:
                    x_adv_all[target] = res.x_adv.detach().cpu().to(x_adv_all.dtype)
            details["attacked"] = int(len(target))
            if autoattack_on == "robust":
                details["attacked_on"] = "samples still robust after the attacks before it (cumulative)"
        else:
            for restart in range(spec.restarts):
                todo = idx if restart == 0 else idx[correct[idx]]
                name = spec.name if restart == 0 else f"{spec.name}/restart{restart}"
                starts = random_starts(x, eps, norm, _attack_seed(seed, name)) if spec.kind != "fgsm" else None
                gen = torch.Generator(device=dev)
                gen.manual_seed(_attack_seed(seed, name))
                for start in range(0, len(todo), batch_size):
                    b = todo[start : start + batch_size]
                    xb, yb = x[b].to(dev), y[b].to(dev)
                    x_init = starts[b].to(dev) if starts is not None else None
                    if spec.kind == "fgsm":
                        res = pgd(model, xb, yb, eps=eps, alpha=eps, steps=1, norm=norm, start="zero",
                                  keep_misclassified=along_path)
                    else:
                        res = pgd(model, xb, yb, eps=eps, alpha=alpha, steps=spec.steps, norm=norm,
                                  start="random", generator=gen, x_init=x_init,
                                  loss="cw" if spec.kind == "cw" else "ce", keep_misclassified=along_path)
                    x_adv = res.x_adv
                    with torch.inference_mode():
                        pred = predicted_class(model(x_adv)).cpu()
                    ok = pred == yb.cpu()
                    details["non_finite"] = details.get("non_finite", 0) + int((pred == NO_CLASS).sum())
                    if res.misclassified is not None and res.first_misclassified is not None:
                        x_adv, ok, k = _earlier_fooling_iterates(model, res.misclassified, res.first_misclassified,
                                                                 x_adv, ok, yb)
                        details["broken_only_before_the_last_step"] = (
                            details.get("broken_only_before_the_last_step", 0) + k)
                    correct[b] = ok & clean[b]
                    if x_adv_all is not None:
                        if restart == 0:
                            x_adv_all[b] = x_adv.detach().cpu()
                        else:  # keep the restart's example where it broke the sample
                            x_adv_all[b[~ok]] = x_adv.detach().cpu()[~ok]
            if spec.restarts > 1:
                details["restarts"] = spec.restarts
        robust_so_far &= correct
        outcomes[spec.name] = AttackOutcome(spec.name, correct, time.perf_counter() - t0, details, x_adv_all)
        if on_outcome is not None:
            on_outcome(outcomes[spec.name])
        if log is not None:
            log(f"{spec.name}: {int(correct.sum())}/{n} robust ({time.perf_counter() - t0:.1f} s)")
    collapsed = class_coverage_warning(outcomes["clean"].details.get("predicted") or [], y)
    warnings = [collapsed] if collapsed else []
    non_finite = {k: int(o.details.get("non_finite") or 0) for k, o in outcomes.items()}
    if any(non_finite.values()):
        where = ", ".join(f"{k} {v}" for k, v in non_finite.items() if v)
        warnings.append(f"the model returned non-finite logits (NaN/inf) on some inputs ({where}); they count as "
                        "wrong, and the attacks' gradients there are meaningless")
    return RobustnessResult(outcomes=outcomes, eps=eps, norm=norm, seed=seed, n=n, warnings=warnings,
                            labels=y.cpu())


def _autoattack_details(res: Any, idx: torch.Tensor, n: int) -> dict[str, Any]:
    """Per-sub-attack breakdown of an AutoAttack run, mapped back to all n samples."""
    details: dict[str, Any] = {"messages": list(getattr(res, "messages", [])),
                               "seconds": {k: round(v, 2) for k, v in (getattr(res, "seconds", None) or {}).items()}}
    robust_after = getattr(res, "robust_after", None) or {}
    breakdown = {}
    for sub, mask in robust_after.items():
        k = int(mask.sum())
        lo, hi = wilson_interval(k, n)
        breakdown[sub] = {"acc": k / n if n else 0.0, "correct": k, "n": n, "ci95": [lo, hi]}
    if breakdown:
        details["robust_after"] = breakdown
    broken_by = getattr(res, "broken_by", None)
    if broken_by is not None:
        counts: dict[str, int] = {}
        for who in broken_by:
            if who is not None:
                counts[who] = counts.get(who, 0) + 1
        details["broken_by"] = counts
    return details
