"""An image folder given explicitly (``eval``/``verify --data``, ``quantize --calib-data``, ``export
--parity-data``) is decoded at the input size and with the evaluation crop the model records, not at the data
set's 32 px default; an explicit size still wins (``verify --input-size``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rkd.cli.app import app
from rkd.data import fit_to_model
from rkd.deploy.bundle import read_manifest
from rkd.models import save_checkpoint
from rkd.testing import train_tiny_classifier

runner = CliRunner()
SIZE = 40  # not the imagefolder default (32): a model trained at 40 px with the ImageNet crop
CLASSES = [f"c{k}" for k in range(10)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``train/`` and ``test/`` with 10 classes of 2 PNGs each, 60x50 sources."""
    from PIL import Image

    root = tmp_path_factory.mktemp("fit") / "images"
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)).save(
                    root / split / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def checkpoint(folder: Path) -> Path:
    meta = {"data": {"dataset": "imagefolder", "classes": CLASSES,
                     "options": {"path": "/elsewhere/images", "image_size": SIZE, "crop_ratio": 0.875}},
            "threat": {"norm": "linf", "eps": 8 / 255, "alpha": 2 / 255}}
    return save_checkpoint(train_tiny_classifier(steps=5), folder.parent / "student.safetensors", metadata=meta)


def test_fit_to_model_fills_size_and_crop_and_lets_given_options_win() -> None:
    record = {"dataset": "imagefolder", "options": {"path": "p", "image_size": 96, "crop_ratio": 0.9}}
    assert fit_to_model("imagefolder", {"path": "q"}, record) == {"path": "q", "image_size": 96, "crop_ratio": 0.9}
    assert fit_to_model("imagefolder", {"path": "q", "image_size": 64}, record) == \
        {"path": "q", "image_size": 64, "crop_ratio": 0.9}
    # a model trained on another data set: its declared input size, with that size's default crop
    assert fit_to_model("imagefolder", {"path": "q"}, {"dataset": "npz"}, input_size=224) == \
        {"path": "q", "image_size": 224, "crop_ratio": 0.875}
    assert fit_to_model("imagefolder", {"path": "q"}, None, input_size=32) == {"path": "q", "image_size": 32}
    # a recorded image folder without a crop (32 px) stays a plain resize
    assert fit_to_model("imagefolder", {"path": "q"}, {"dataset": "imagefolder", "options": {"image_size": 32}},
                        input_size=32) == {"path": "q", "image_size": 32}
    assert fit_to_model("imagefolder", {"path": "q"}, None) == {"path": "q"}
    assert fit_to_model("npz", {"path": "q"}, record, input_size=96) == {"path": "q"}


def test_export_parity_data_is_decoded_at_the_recorded_size(checkpoint: Path, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    res = runner.invoke(app, ["export", str(checkpoint), "--out", str(out), "--parity-data", f"imagefolder:{folder}",
                              "--parity-n", "4"])
    assert res.exit_code == 0, res.output
    manifest = read_manifest(out)
    assert manifest["input"]["shape"] == [None, 3, SIZE, SIZE]
    assert manifest["export"]["parity_data"]["options"] == {"path": str(folder), "image_size": SIZE,
                                                            "crop_ratio": 0.875}


def test_quantize_calib_data_is_decoded_at_the_recorded_size(checkpoint: Path, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    res = runner.invoke(app, ["export", str(checkpoint), "--out", str(out), "--parity-data",
                              f"imagefolder:{folder}", "--parity-n", "2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["quantize", str(checkpoint), "--out", str(out), "--calib-data", f"imagefolder:{folder}",
                              "--calib-n", "8", "--eval-n", "4", "--eval-attacks", "none"])
    assert res.exit_code == 0, res.output
    section = read_manifest(out)["quantize"]
    assert section["calibration"]["options"] == {"path": str(folder), "image_size": SIZE, "crop_ratio": 0.875}
    assert section["evaluation"]["data"]["options"]["image_size"] == SIZE


def test_eval_data_is_decoded_at_the_recorded_size(checkpoint: Path, folder: Path, tmp_path: Path) -> None:
    report = tmp_path / "eval.json"
    res = runner.invoke(app, ["eval", str(checkpoint), "--data", f"imagefolder:{folder}", "--n", "4",
                              "--attacks", "clean", "--report", str(report)])
    assert res.exit_code == 0, res.output
    rep = json.loads(report.read_text())
    assert rep["data"]["options"] == {"path": str(folder), "image_size": SIZE, "crop_ratio": 0.875}
    assert rep["model"]["trained_on"]["options"]["image_size"] == SIZE


def test_verify_data_takes_the_recorded_size_and_input_size_wins(checkpoint: Path, folder: Path,
                                                                 tmp_path: Path) -> None:
    def verify(out: Path, *extra: str) -> dict:
        res = runner.invoke(app, ["verify", "--engine", str(checkpoint), "--data", f"imagefolder:{folder}",
                                  "--n", "4", "--attacks", "fgsm", "--gate", "clean_acc>=0", "--allow-no-floor",
                                  "--report", str(out), *extra])
        assert res.exit_code == 0, res.output
        return json.loads((out / "verify.json").read_text())

    assert verify(tmp_path / "a")["data"]["options"] == {"path": str(folder), "image_size": SIZE,
                                                         "crop_ratio": 0.875}
    assert verify(tmp_path / "b", "--input-size", "36")["data"]["options"] == \
        {"path": str(folder), "image_size": 36, "crop_ratio": 0.875}
