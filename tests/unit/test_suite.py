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


class _Engine:
    """A runtime around a torch model whose logits ``post(x, z)`` may change (an engine that misbehaves)."""

    def __init__(self, model: torch.nn.Module, post) -> None:
        self.model, self.post = model, post

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.post(x, self.model(x.detach().float()))


def test_predicted_class_gives_no_class_for_non_finite_rows() -> None:
    from rkd.attacks.predictions import NO_CLASS, predicted_class

    z = torch.tensor([[0.0, 2.0, 1.0], [float("nan")] * 3, [5.0, float("nan"), 0.0], [1.0, float("inf"), 0.0]])
    assert predicted_class(z).tolist() == [1, NO_CLASS, NO_CLASS, NO_CLASS]


def test_an_engine_returning_nan_under_attack_is_not_robust() -> None:
    """argmax of an all-NaN row is class 0: without the check every class-0 sample would stay 'robust'."""
    from rkd.verify.engine_model import EngineModel

    model = train_tiny_classifier()
    data = load_dataset("synthetic", "test", n=64)
    x = data.to_float()
    with torch.inference_mode():
        y = model(x).argmax(1)  # every sample clean-correct
    assert int((y == 0).sum()) > 0

    def nan_off_the_clean_images(xin: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        clean = (xin.unsqueeze(1) == x.unsqueeze(0)).flatten(2).all(2).any(1)
        return torch.where(clean.unsqueeze(1), z, torch.full_like(z, float("nan")))

    engine = EngineModel(_Engine(model, nan_off_the_clean_images), model)
    res = evaluate_robustness(engine, x, y, attacks="fgsm,pgd3", eps=8 / 255)
    assert bool(res.outcomes["clean"].correct.all())
    assert int(res.worst_case.sum()) == 0
    assert any("non-finite logits" in w for w in res.warnings)


def test_a_fooling_iterate_counts_when_the_path_moves_on() -> None:
    """An engine attacked through a surrogate whose gradient points elsewhere: PGD passes through points that
    fool the engine and ends where it does not. The verifier's scoring counts the path; the protocol's does
    not."""
    from rkd.verify.engine_model import EngineModel

    n, eps = 32, 8 / 255
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    y = torch.zeros(n, dtype=torch.long)

    class Surrogate(torch.nn.Module):  # the gradient pushes every pixel up
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return torch.stack([torch.zeros(len(z)), self.w * z.flatten(1).sum(1)], 1)

    def wrong_below_the_clean_mean(xin: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        nearest = (xin.unsqueeze(1) - x.unsqueeze(0)).abs().flatten(2).amax(2).argmin(1)
        below = (xin - x[nearest]).flatten(1).mean(1) < 0  # only the random start can be below
        return torch.stack([(~below).float(), below.float()], 1)

    engine = EngineModel(_Engine(torch.nn.Identity(), wrong_below_the_clean_mean), Surrogate())
    last = evaluate_robustness(engine, x, y, attacks="pgd5", eps=eps, keep_adv=True)
    path = evaluate_robustness(engine, x, y, attacks="pgd5", eps=eps, keep_adv=True, score_every_iterate=True)
    broken = ~path.outcomes["pgd5"].correct
    assert bool(last.outcomes["pgd5"].correct.all())  # the final iterate never fools
    assert 0 < int(broken.sum()) < n  # the random starts below the clean mean did
    assert path.outcomes["pgd5"].details["broken_only_before_the_last_step"] == int(broken.sum())
    x_adv = path.outcomes["pgd5"].x_adv
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    with torch.inference_mode():  # the kept example of a broken sample fools the engine
        assert bool((engine(x_adv[broken]).argmax(1) != 0).all())


def test_two_autoattack_type_attacks_keep_two_state_files(tmp_path) -> None:
    model = train_tiny_classifier()
    data = load_dataset("synthetic", "test", n=8)
    x, y = data.to_float(), data.y
    state = tmp_path / "engine.autoattack.safetensors"
    kw = dict(attacks="aa-custom:apgd-ce,aa-custom:apgd-dlr", eps=2 / 255, keep_adv=True, autoattack_on="robust",
              batch_size=8, autoattack_state=state)
    first = evaluate_robustness(model, x, y, **kw)
    assert state.is_file() and (tmp_path / "engine.autoattack.aa-custom_apgd-dlr.safetensors").is_file()
    again = evaluate_robustness(model, x, y, **kw)  # both resume from their own files
    for name in ("aa-custom:apgd-ce", "aa-custom:apgd-dlr"):
        assert torch.equal(first.outcomes[name].correct, again.outcomes[name].correct)


def test_l2_suite_stays_in_the_l2_ball() -> None:
    """FGSM, PGD and CW all attack in the suite's norm (FGSM was L-inf with the L2 radius)."""
    model = train_tiny_classifier()
    data = load_dataset("synthetic", "test", n=32)
    x, y = data.to_float(), data.y
    res = evaluate_robustness(model, x, y, attacks="fgsm,pgd3,cw5", eps=0.5, alpha=0.2, norm="l2", keep_adv=True,
                              score_every_iterate=True)
    for name in ("fgsm", "pgd3", "cw5"):
        delta = (res.outcomes[name].x_adv - x).flatten(1)
        assert float(delta.norm(dim=1).max()) <= 0.5 + 1e-5, name
        assert float(delta.abs().max()) > 8 / 255  # an L2 step, not an L-inf one of radius 0.5 either
    evaluate_robustness(model, x[:2], y[:2], attacks="fgsm", eps=1.5, norm="l2")  # L2 radii may exceed 1


def test_options_object_and_keywords_give_the_same_result() -> None:
    from rkd.verify.suite import SuiteOptions

    model = train_tiny_classifier()
    data = load_dataset("synthetic", "test", n=40)
    x, y = data.to_float(), data.y
    kw = {"alpha": 3 / 255, "batch_size": 16, "seed": 5, "score_every_iterate": True, "keep_adv": True}
    a = evaluate_robustness(model, x, y, attacks="pgd3", eps=8 / 255, **kw)
    b = evaluate_robustness(model, x, y, attacks="pgd3", eps=8 / 255, options=SuiteOptions(**kw))
    assert torch.equal(a.outcomes["pgd3"].correct, b.outcomes["pgd3"].correct)
    assert torch.equal(a.outcomes["pgd3"].x_adv, b.outcomes["pgd3"].x_adv)
    c = evaluate_robustness(model, x, y, attacks="pgd3", eps=8 / 255, options=SuiteOptions(**{**kw, "seed": 6}))
    assert not torch.equal(a.outcomes["pgd3"].x_adv, c.outcomes["pgd3"].x_adv)  # the options reach the attack
    with pytest.raises(UsageError, match="unknown setting.*alhpa"):
        evaluate_robustness(model, x, y, attacks="pgd3", eps=8 / 255, alhpa=0.1)
    with pytest.raises(UsageError, match="not both"):
        evaluate_robustness(model, x, y, attacks="pgd3", eps=8 / 255, options=SuiteOptions(), seed=1)
