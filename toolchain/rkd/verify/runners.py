"""One runner per attack kind of the suite (:data:`RUNNERS`): the gradient attacks (FGSM, PGD-k with restarts,
CW-inf: rkd's own :func:`~rkd.attacks.pgd.pgd`) and the AutoAttack family (pyautoattack through
:func:`~rkd.attacks.run_autoattack`). Each takes the run's shared state (:class:`SuiteRun`) and one
:class:`~rkd.verify.attack_spec.AttackSpec`, and returns its per-sample correctness, details and, with
``keep_adv``, its adversarial examples.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rkd.attacks.predictions import NO_CLASS, predicted_class
from rkd.progress import unit as progress_unit
from rkd.stats import accuracy_summary
from rkd.verify.attack_spec import AttackSpec


@dataclass
class SuiteRun:
    """The settings and per-sample state one suite run shares with its runners."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    eps: float
    alpha: float
    norm: str
    batch_size: int
    seed: int
    device: torch.device
    clean: torch.Tensor  # correct on the clean input
    idx: torch.Tensor  # the samples the gradient attacks start from
    robust_so_far: torch.Tensor  # robust to every attack run so far
    keep_adv: bool = False
    autoattack_on: str = "clean"
    along_path: bool = False  # score every iterate (rkd verify)
    aa_states: dict[str, Path] = field(default_factory=dict)
    log: Callable[[str], None] | None = None


Runner = Callable[[SuiteRun, AttackSpec], "tuple[torch.Tensor, dict[str, Any], torch.Tensor | None]"]


def _gradient_batch(run: SuiteRun, spec: AttackSpec, b: torch.Tensor, gen: torch.Generator,
                    starts: torch.Tensor | None, details: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch ``b`` of a gradient attack: its adversarial examples and per-sample correctness (an earlier
    fooling iterate replaces a final one that does not fool, with ``along_path``)."""
    from rkd.attacks.pgd import pgd

    xb, yb = run.x[b].to(run.device), run.y[b].to(run.device)
    x_init = starts[b].to(run.device) if starts is not None else None
    if spec.kind == "fgsm":
        res = pgd(run.model, xb, yb, eps=run.eps, alpha=run.eps, steps=1, norm=run.norm, start="zero",
                  keep_misclassified=run.along_path)
    else:
        res = pgd(run.model, xb, yb, eps=run.eps, alpha=run.alpha, steps=spec.steps, norm=run.norm,
                  start="random", generator=gen, x_init=x_init, loss="cw" if spec.kind == "cw" else "ce",
                  keep_misclassified=run.along_path)
    x_adv = res.x_adv
    with torch.inference_mode():
        pred = predicted_class(run.model(x_adv)).cpu()
    ok = pred == yb.cpu()
    details["non_finite"] = details.get("non_finite", 0) + int((pred == NO_CLASS).sum())
    if res.misclassified is not None and res.first_misclassified is not None:
        x_adv, ok, k = _earlier_fooling_iterates(run.model, res.misclassified, res.first_misclassified, x_adv, ok, yb)
        details["broken_only_before_the_last_step"] = details.get("broken_only_before_the_last_step", 0) + k
    return x_adv, ok


def run_gradient_attack(run: SuiteRun, spec: AttackSpec) -> tuple[torch.Tensor, dict[str, Any], torch.Tensor | None]:
    """FGSM, PGD-k (each restart on the samples still robust) or CW-inf, batch by batch, seeded per attack and
    restart (:func:`random_starts`, independent of order and batching)."""
    n = len(run.x)
    correct = torch.zeros(n, dtype=torch.bool)
    details: dict[str, Any] = {}
    x_adv_all = run.x.clone() if run.keep_adv else None
    for restart in range(spec.restarts):
        todo = run.idx if restart == 0 else run.idx[correct[run.idx]]
        name = spec.name if restart == 0 else f"{spec.name}/restart{restart}"
        starts = random_starts(run.x, run.eps, run.norm, _attack_seed(run.seed, name)) if spec.kind != "fgsm" else None
        gen = torch.Generator(device=run.device)
        gen.manual_seed(_attack_seed(run.seed, name))
        label = spec.name if spec.restarts == 1 else f"{spec.name} restart {restart + 1}/{spec.restarts}"
        with progress_unit(label, len(todo)) as sink:
            for start in range(0, len(todo), run.batch_size):
                b = todo[start : start + run.batch_size]
                x_adv, ok = _gradient_batch(run, spec, b, gen, starts, details)
                correct[b] = ok & run.clean[b]
                if x_adv_all is not None:
                    if restart == 0:
                        x_adv_all[b] = x_adv.detach().cpu()
                    else:  # keep the restart's example where it broke the sample
                        x_adv_all[b[~ok]] = x_adv.detach().cpu()[~ok]
                sink.advance(start + len(b), int(correct[todo[: start + len(b)]].sum()))
    if spec.restarts > 1:
        details["restarts"] = spec.restarts
    return correct, details, x_adv_all


def run_autoattack_spec(run: SuiteRun, spec: AttackSpec) -> tuple[torch.Tensor, dict[str, Any], torch.Tensor | None]:
    """AutoAttack (standard), Square or a custom subset on the clean-correct samples (``autoattack_on="clean"``,
    its own protocol) or on those still robust after the attacks before it (``"robust"``, cumulative)."""
    from rkd.attacks import run_autoattack

    n = len(run.x)
    correct = torch.zeros(n, dtype=torch.bool)
    details: dict[str, Any] = {}
    x_adv_all = run.x.clone() if run.keep_adv else None
    version = "standard" if spec.name == "autoattack" else "custom"
    target = run.robust_so_far.nonzero().flatten() if run.autoattack_on == "robust" else run.idx
    target = target[run.clean[target]]
    if len(target):
        res = run_autoattack(
            run.model, run.x[target].contiguous(), run.y[target], eps=run.eps,
            norm="Linf" if run.norm == "linf" else "L2", version=version,
            attacks=None if version == "standard" else list(spec.subattacks), batch_size=run.batch_size,
            seed=run.seed, device=run.device, state_path=run.aa_states.get(spec.name), log=run.log,
        )
        correct[target] = res.robust.cpu()
        details = _autoattack_details(res, target, n)
        if x_adv_all is not None:
            x_adv_all[target] = res.x_adv.detach().cpu().to(x_adv_all.dtype)
    details["attacked"] = int(len(target))
    if run.autoattack_on == "robust":
        details["attacked_on"] = "samples still robust after the attacks before it (cumulative)"
    return correct, details, x_adv_all


#: The runner of each attack kind (``clean`` is the suite's own first step).
RUNNERS: dict[str, Runner] = {"fgsm": run_gradient_attack, "pgd": run_gradient_attack, "cw": run_gradient_attack,
                              "autoattack": run_autoattack_spec}


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


def _autoattack_details(res: Any, idx: torch.Tensor, n: int) -> dict[str, Any]:
    """Per-sub-attack breakdown of an AutoAttack run, mapped back to all n samples."""
    details: dict[str, Any] = {"messages": list(getattr(res, "messages", [])),
                               "seconds": {k: round(v, 2) for k, v in (getattr(res, "seconds", None) or {}).items()}}
    robust_after = getattr(res, "robust_after", None) or {}
    breakdown = {}
    for sub, mask in robust_after.items():
        breakdown[sub] = accuracy_summary(int(mask.sum()), n)
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
