"""``rkd verify --curve``: the worst case over the run's gradient attacks per eps, Wilson bands, k/255 texts, the
PNG and its link in the Markdown report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rkd.testing import train_tiny_classifier
from rkd.verify.attack_spec import parse_attacks
from rkd.verify.report import markdown, write_reports
from rkd.verify.verification import VerifyRequest, curve_attacks, verify_artifact

EPS = 8 / 255


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rkd.data import load_dataset
    from rkd.models import save_checkpoint

    data = load_dataset("synthetic", "train")
    meta = {"data": {"dataset": "synthetic", "classes": list(data.classes)},
            "threat": {"norm": "linf", "eps": EPS, "alpha": 2 / 255}}
    return save_checkpoint(train_tiny_classifier(), tmp_path_factory.mktemp("ck") / "m.safetensors", metadata=meta)


def test_the_curve_repeats_the_runs_gradient_attacks() -> None:
    specs = parse_attacks("fgsm,pgd5,square")
    assert [s.name for s in curve_attacks(specs, "pgd20")] == ["fgsm", "pgd5"]  # not Square: no white box
    assert [s.name for s in curve_attacks(parse_attacks("square"), "pgd20")] == ["pgd20"]  # the fallback


def test_curve_values_bands_plot_and_markdown(checkpoint: Path, tmp_path: Path) -> None:
    request = VerifyRequest(artifact=checkpoint, dataset="synthetic", n=48, attacks="fgsm,pgd3", eps=EPS,
                            eps_text="8/255", batch_size=16, curve_eps=[0.0, 4 / 255, EPS, 16 / 255])
    rep = verify_artifact(request)
    curve = rep["curve"]
    assert curve["attacks"] == ["fgsm", "pgd3"] and curve["eps_text"] == ["0/255", "4/255", "8/255", "16/255"]
    i = curve["eps"].index(EPS)
    # at the run's eps the curve is the report's worst case over the same attacks, sample by sample
    worst = np.array(rep["per_sample"]["clean"]) & np.array(rep["per_sample"]["fgsm"]) & \
        np.array(rep["per_sample"]["pgd3"])
    assert curve["engine"][i] == pytest.approx(worst.mean())
    assert curve["engine"][i] <= min(rep["attacks"]["fgsm"]["acc"], rep["attacks"]["pgd3"]["acc"])
    assert curve["engine"][0] == pytest.approx(rep["clean_acc"])
    for label in ("engine", "float"):
        assert len(curve[label]) == 4 and len(curve[f"{label}_ci95"]) == 4
        for value, (lo, hi) in zip(curve[label], curve[f"{label}_ci95"], strict=True):
            assert lo <= value <= hi and hi - lo > 0
    assert curve["engine"][3] <= curve["engine"][1]  # a larger ball breaks at least as much here
    paths = write_reports(rep, tmp_path / "r")
    assert paths["curve"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "r" / "verify.md").read_text()
    assert "![accuracy against eps](verify.curve.png)" in md  # relative: beside verify.md
    assert "| 16/255 |" in md and "eps=8/255" in md
    assert markdown({**rep, "curve": None}).count("verify.curve.png") == 0


def test_the_curve_at_the_runs_eps_equals_a_single_attacks_accuracy(checkpoint: Path) -> None:
    rep = verify_artifact(VerifyRequest(artifact=checkpoint, dataset="synthetic", n=32, attacks="pgd3", eps=EPS,
                                        batch_size=16, curve_eps=[EPS / 2, EPS]))
    assert rep["curve"]["engine"][1] == pytest.approx(rep["attacks"]["pgd3"]["acc"])
    assert rep["curve"]["engine"][0] >= rep["curve"]["engine"][1]
