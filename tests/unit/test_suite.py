"""The robustness suite: attack names, restarts, and per-sample results that do not depend on batching."""

from __future__ import annotations

import pytest
import torch

from rkd.data import load_dataset
from rkd.errors import UsageError
from rkd.testing import train_tiny_classifier
from rkd.verify.suite import class_coverage_warning, evaluate_robustness, parse_attacks


def test_attack_names_parse() -> None:
    specs = {s.name: s for s in parse_attacks("fgsm,pgd20r3,cw,square,autoattack")}
    assert specs["pgd20r3"].steps == 20 and specs["pgd20r3"].restarts == 3
    assert specs["cw"].steps == 30 and specs["square"].subattacks == ("square",)
    assert not specs["square"].uses_gradients and specs["autoattack"].uses_gradients
    for bad in ("pgd", "pgd20r0", "aa-custom:apgd-xx"):
        with pytest.raises(UsageError):
            parse_attacks(bad)


def test_restarts_and_batching() -> None:
    model = train_tiny_classifier()
    data = load_dataset("synthetic", "test", n=96)
    x, y = data.to_float(), data.y
    eps = 12 / 255
    one = evaluate_robustness(model, x, y, attacks="pgd5", eps=eps, alpha=eps / 4, batch_size=96)
    small = evaluate_robustness(model, x, y, attacks="pgd5", eps=eps, alpha=eps / 4, batch_size=7)
    assert torch.equal(one.outcomes["pgd5"].correct, small.outcomes["pgd5"].correct)  # starts drawn per sample
    three = evaluate_robustness(model, x, y, attacks="pgd5r3", eps=eps, alpha=eps / 4, keep_adv=True)
    first, more = one.outcomes["pgd5"].correct, three.outcomes["pgd5r3"].correct
    assert bool((more <= first).all()) and int(more.sum()) < int(first.sum())  # restarts only break more
    x_adv = three.outcomes["pgd5r3"].x_adv
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    with torch.inference_mode():  # the kept examples are the ones that broke the samples
        broken = ~more & three.outcomes["clean"].correct
        assert bool((model(x_adv[broken]).argmax(1) != y[broken]).all())


def test_attack_errors_moves_misclassified_samples_without_counting_them() -> None:
    """``attack_errors`` attacks the clean errors too (their examples exist for transfer), same accuracies."""
    model = train_tiny_classifier()
    data = load_dataset("synthetic", "test", n=200)
    x, y = data.to_float(), data.y.clone()
    y[:20] = (y[:20] + 1) % len(data.classes)  # clean errors
    eps = 8 / 255
    plain = evaluate_robustness(model, x, y, attacks="fgsm,pgd5", eps=eps, alpha=eps / 4, keep_adv=True)
    every = evaluate_robustness(model, x, y, attacks="fgsm,pgd5", eps=eps, alpha=eps / 4, keep_adv=True,
                                attack_errors=True)
    wrong = ~plain.outcomes["clean"].correct
    assert int(wrong.sum()) > 0
    for name in ("fgsm", "pgd5"):
        assert torch.equal(plain.outcomes[name].correct, every.outcomes[name].correct)  # errors stay non-robust
        moved = (every.outcomes[name].x_adv - x).flatten(1).abs().amax(1)
        assert torch.equal(plain.outcomes[name].x_adv[wrong], x[wrong])  # not attacked by default
        assert bool((moved[wrong] > eps / 2).all()) and float(moved.max()) <= eps + 1e-6


class _Constant(torch.nn.Module):
    """Predicts class ``k`` for every input."""

    def __init__(self, k: int, classes: int = 10) -> None:
        super().__init__()
        self.k, self.classes = k, classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(x), self.classes)
        out[:, self.k] = 1.0
        return out + 0 * x.flatten(1)[:, :1]


def test_collapsed_classifier_is_flagged() -> None:
    """A constant classifier keeps its class's samples under any attack: the suite says it is collapsed."""
    x = torch.rand(60, 3, 8, 8)
    y = torch.arange(60) % 10
    res = evaluate_robustness(_Constant(3), x, y, attacks="clean,pgd5", eps=8 / 255)
    assert res.outcomes["clean"].details["predicted"] == [0, 0, 0, 60] + [0] * 6
    assert res.accuracy("pgd5") == pytest.approx(0.1)  # "robust" on every class-3 sample
    assert len(res.warnings) == 1 and "overstates its robustness" in res.warnings[0]
    assert "predicts class 3 for 100%" in res.warnings[0] and "1 of 10 classes" in res.warnings[0]
    assert res.to_dict()["warnings"] == res.warnings


def test_class_coverage_thresholds() -> None:
    y = torch.arange(100) % 10  # 10 samples per class
    balanced = [10] * 10
    assert class_coverage_warning(balanced, y) is None
    skewed = [19, 9, 9, 9, 9, 9, 9, 9, 9, 9]  # 19% for a 10% class: not above 20%
    assert class_coverage_warning(skewed, y) is None
    one_missing = [12, 11, 11, 11, 11, 11, 11, 11, 11, 0]
    assert "never predicts class 9 " in (class_coverage_warning(one_missing, y) or "")
    dominant = [40, 0, 12, 8, 8, 8, 8, 8, 8, 0]
    msg = class_coverage_warning(dominant, y) or ""
    assert "classes 1, 9" in msg and "class 0 for 40%" in msg and "8 of 10 classes" in msg
    # a class with fewer than min_support test samples may go unpredicted without a warning
    y_rare = torch.cat([torch.arange(96) % 9, torch.full((4,), 9)])
    assert class_coverage_warning([11] * 9 + [1], y_rare) is None
    assert class_coverage_warning([12, 12, 12, 12, 12, 12, 12, 8, 8, 0], y_rare) is None


def test_by_class_matches_the_per_sample_columns() -> None:
    """Per-class accuracy, support and the "without the most predicted class" column, recomputed by hand."""
    model = train_tiny_classifier()
    data = load_dataset("synthetic", "test", n=96)
    x, y = data.to_float(), data.y
    res = evaluate_robustness(model, x, y, attacks="fgsm,pgd5", eps=12 / 255, alpha=3 / 255)
    names = [f"c{i}" for i in range(12)]
    bc = res.by_class(names)  # padded beyond the labels present
    assert bc["classes"] == names and len(bc["support"]) == len(bc["predicted"]) == 12
    assert bc["support"][10:] == [0, 0]
    assert sum(bc["support"]) == 96 and sum(bc["predicted"]) == 96
    top = bc["most_predicted"]
    assert bc["predicted"][top] == max(bc["predicted"])
    for name, ok in {**{k: o.correct for k, o in res.outcomes.items()}, "worst_case": res.worst_case}.items():
        for c in range(12):
            mask = y == c
            want = float(ok[mask].float().mean()) if bool(mask.any()) else None
            assert bc["acc"][name][c] == (pytest.approx(want) if want is not None else None)
        assert bc["without_most_predicted"][name] == pytest.approx(float(ok[y != top].float().mean()))
    # the worst case per class never exceeds any attack's
    for c in range(int(y.max()) + 1):
        assert bc["acc"]["worst_case"][c] <= min(bc["acc"][a][c] for a in ("clean", "fgsm", "pgd5"))


def test_by_class_of_a_collapsed_classifier() -> None:
    """A constant classifier: 100% on its class, 0% elsewhere, and 0% once that class is left out."""
    x = torch.rand(60, 3, 8, 8)
    y = torch.arange(60) % 10
    bc = evaluate_robustness(_Constant(3), x, y, attacks="clean,pgd5", eps=8 / 255).by_class()
    assert bc["most_predicted"] == 3 and bc["support"] == [6] * 10
    assert bc["acc"]["pgd5"] == [0.0, 0.0, 0.0, 1.0] + [0.0] * 6
    assert bc["without_most_predicted"] == {"clean": 0.0, "pgd5": 0.0, "worst_case": 0.0}
