"""Defaults from the artifact: a model trained on the synthetic data set is exported (parity), quantized
(calibration) and verified on synthetic images without being told, from what its checkpoint and its bundle's
manifest record; an explicit data set still wins, and CIFAR-10 is never touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rkd.cli.app import app
from rkd.data import load_dataset, recorded_data
from rkd.deploy.bundle import manifest_data, read_manifest
from rkd.errors import UsageError
from rkd.models import save_checkpoint
from rkd.testing import train_tiny_classifier

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_cifar(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading CIFAR (a download here) is a failure: every default must come from the artifact."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("CIFAR was loaded: the data set should have come from the artifact")

    monkeypatch.setattr("rkd.data.datasets.load_cifar", refuse)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("defaults")
    classes = list(load_dataset("synthetic", "test").classes)
    meta = {"data": {"dataset": "synthetic", "options": {}, "classes": classes},
            "threat": {"norm": "linf", "eps": 8 / 255, "alpha": 2 / 255}}
    return save_checkpoint(train_tiny_classifier(), root / "student.safetensors", metadata=meta)


@pytest.fixture(scope="module")
def bundle(checkpoint: Path) -> Path:
    """``rkd export`` then ``rkd quantize`` with no data option at all."""
    out = checkpoint.parent / "bundle"
    mp = pytest.MonkeyPatch()
    mp.setattr("rkd.data.datasets.load_cifar", lambda *a, **k: pytest.fail("CIFAR was loaded"))
    try:
        res = runner.invoke(app, ["export", str(checkpoint), "--out", str(out), "--parity-n", "32"])
        assert res.exit_code == 0, res.output
        res = runner.invoke(app, ["quantize", str(checkpoint), "--out", str(out), "--calib-n", "128",
                                  "--eval-n", "32", "--eval-attacks", "pgd2"])
        assert res.exit_code == 0, res.output
    finally:
        mp.undo()
    return out


def test_export_and_quantize_take_the_data_set_the_checkpoint_records(bundle: Path) -> None:
    manifest = read_manifest(bundle)
    assert manifest["data"] == {"dataset": "synthetic", "options": {}}
    assert manifest["export"]["parity_data"]["dataset"] == "synthetic" and manifest["export"]["parity_data"]["n"] == 32
    calib = manifest["quantize"]["calibration"]
    assert calib["dataset"] == "synthetic" and calib["n"] == 128
    assert manifest["quantize"]["evaluation"]["data"]["dataset"] == "synthetic"


def _verify(artifact: Path, out: Path, *extra: str) -> dict:
    res = runner.invoke(app, ["verify", "--engine", str(artifact), "--n", "64", "--attacks", "fgsm",
                              "--gate", "clean_acc>=0", "--allow-no-floor", "--report", str(out), *extra])
    assert res.exit_code == 0, res.output
    return json.loads((out / "verify.json").read_text())


def test_verify_takes_the_bundles_data_set_and_an_explicit_one_wins(bundle: Path, tmp_path: Path) -> None:
    rep = _verify(bundle / "model.int8.onnx", tmp_path / "a")
    assert rep["data"]["dataset"] == "synthetic" and rep["data"]["source"] == "the bundle's manifest"
    assert rep["data"]["options"]["n"] == 128  # as many images as the synthetic test split has by default
    same = _verify(bundle, tmp_path / "b", "--data", "synthetic")  # the same images as told explicitly
    assert same["data"]["source"] == "given" and same["data"]["indices_sha256"] == rep["data"]["indices_sha256"]
    assert same["per_sample"] == rep["per_sample"]
    other = _verify(bundle, tmp_path / "c", "--data", "synthetic:n=300,seed=3")
    assert other["data"]["options"] == {"n": 300, "seed": 3} and other["data"]["source"] == "given"
    assert other["per_sample"] != rep["per_sample"]


def test_verify_of_a_checkpoint_takes_the_data_set_it_records(checkpoint: Path, tmp_path: Path) -> None:
    rep = _verify(checkpoint, tmp_path / "r")
    assert rep["data"]["dataset"] == "synthetic" and rep["data"]["source"] == "the checkpoint"


def test_recorded_data_sizes_generated_sets_and_refuses_unknown_ones() -> None:
    assert recorded_data(None, split="test") is None
    assert recorded_data({"dataset": "cifar10"}, split="test", n=1000, image_size=32) == ("cifar10", {})
    assert recorded_data({"dataset": "synthetic", "options": {"num_classes": 5, "n": 9}}, split="train",
                         n=64) == ("synthetic", {"num_classes": 5, "n": 256})
    assert recorded_data({"dataset": "synthetic"}, split="test", n=1000, image_size=48) == \
        ("synthetic", {"image_size": 48, "n": 1000})
    assert recorded_data({"dataset": "imagefolder", "options": {"path": "imgs"}}, split="test", image_size=64) == \
        ("imagefolder", {"path": "imgs", "image_size": 64})
    with pytest.raises(UsageError, match="records data set 'mnist', which this rkd does not know; pass --data"):
        recorded_data({"dataset": "mnist"}, split="test")


def test_an_older_manifest_falls_back_to_its_calibration_data() -> None:
    calib = {"quantize": {"calibration": {"dataset": "npz", "options": {"path": "d"}, "n": 512}}}
    assert manifest_data(calib) == {"dataset": "npz", "options": {"path": "d"}}
    assert manifest_data({"data": {"dataset": "cifar100", "options": {}}, **calib})["dataset"] == "cifar100"
    assert manifest_data({"model": {}}) is None and manifest_data(None) is None
