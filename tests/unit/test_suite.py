"""The robustness suite: attack names, restarts, and per-sample results that do not depend on batching."""

from __future__ import annotations

import pytest
import torch

from rkd.data import load_dataset
from rkd.errors import UsageError
from rkd.testing import train_tiny_classifier
from rkd.verify.suite import evaluate_robustness, parse_attacks


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
