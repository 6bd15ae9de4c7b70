"""What a suite run measured: per-sample correctness under each attack (:class:`AttackOutcome`) and the whole
run (:class:`RobustnessResult`: worst case, RobustBench-named JSON, accuracy per class)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rkd.stats import accuracy_summary


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
        return accuracy_summary(int(self.correct.sum()), int(self.correct.numel())) | {"seconds": self.seconds}


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
        attacks = {name: o.summary() | ({"details": o.details} if o.details else {})
                   for name, o in self.outcomes.items()}
        worst = accuracy_summary(int(self.worst_case.sum()), self.n)
        out: dict[str, Any] = {
            "eps": self.eps,
            "norm": self.norm,
            "n": self.n,
            "seed": self.seed,
            "clean_acc": attacks["clean"]["acc"],
            "robust_acc": worst["acc"],
            "attacks": attacks,
            "worst_case": worst,
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
