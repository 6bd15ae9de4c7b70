"""``rkd run recipes/imagefolder-mobilenetv2-96.yaml`` end to end on a tiny generated image folder (streamed at
96 px, torchvision MobileNetV2 student, INT8, verify), then ``rkd verify`` reproducing the recorded evaluation
transform, and a folder with another class count refused with exit 2."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rkd.cli.app import app

REPO = Path(__file__).resolve().parents[2]
RECIPE = str(REPO / "recipes" / "imagefolder-mobilenetv2-96.yaml")
runner = CliRunner()

TINY = [
    "device=cpu", "data.holdout=3", "data.batch_size=4", "data.num_workers=0",
    "teacher.model.width=0.0625", "teacher.method.steps=1", "teacher.train.epochs=1", "teacher.train.eval_n=3",
    "teacher.train.eval_pgd_steps=1", "teacher.train.warmup_epochs=0",
    "student.model.width=0.25", "student.method.steps=1", "student.train.epochs=1", "student.train.eval_n=3",
    "student.train.eval_pgd_steps=1", "student.train.warmup_epochs=0",
    "deploy.calibration_n=6", "verify.n=6", "verify.attacks=pgd2", "verify.gates=[clean_acc>=0.0]",
    "verify.allow_no_floor=true",
]


def write_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "fox"), per_class: int = 8) -> Path:
    """``root/{train,test}/CLASS/*.png``: random images of mixed sizes with a class-dependent colour."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 2)):
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                h, w = ((40, 48), (90, 70))[i % 2]
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                pixels[..., k % 3] = 200
                Image.fromarray(pixels).save(root / split / name / f"{i:03d}.png")
    return root


@pytest.mark.slow
def test_the_96_px_recipe_runs_every_stage_on_an_image_folder(tmp_path: Path) -> None:
    images = write_folder(tmp_path / "images")
    out = tmp_path / "run"
    args = ["run", RECIPE, "--out", str(out)]
    for item in [f"data.path={images}", *TINY]:
        args += ["--set", item]
    cwd = os.getcwd()
    os.chdir(REPO)  # the profile is looked up in ./export
    try:
        res = runner.invoke(app, args, catch_exceptions=False)
    finally:
        os.chdir(cwd)
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["input"]["shape"] == [None, 3, 96, 96]
    assert manifest["model"]["name"] == "tv_mobilenet_v2" and manifest["classes"] == ["cat", "dog", "fox"]
    assert manifest["data"]["options"] == {"path": str(images), "image_size": 96, "crop_ratio": 0.875}
    assert manifest["data"]["transforms"]["eval"] == "Resize(109) + CenterCrop(96)"
    assert manifest["data"]["transforms"]["loader"] == "streamed"
    assert manifest["threat_model"]["eps"] == pytest.approx(4 / 255)
    ran = json.loads((out / "verify" / "verify.json").read_text())

    # rkd verify on the bundle alone decodes the test images as recorded: the same samples
    report = tmp_path / "again"
    res = runner.invoke(app, ["verify", "--engine", str(out / "bundle" / "model.int8.onnx"), "--no-gates",
                              "--attacks", "pgd2", "--n", "6", "--report", str(report)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    again = json.loads((report / "verify.json").read_text())
    assert again["data"]["options"]["crop_ratio"] == 0.875
    assert again["data"]["indices_sha256"] == ran["data"]["indices_sha256"]

    # a folder with another class count is refused in one line, exit 2
    other = write_folder(tmp_path / "four", classes=("cat", "dog", "fox", "owl"))
    res = runner.invoke(app, ["verify", "--engine", str(out / "bundle" / "model.int8.onnx"), "--no-gates",
                              "--attacks", "pgd2", "--n", "6", "--data", f"imagefolder:{other}",
                              "--report", str(tmp_path / "other")], catch_exceptions=False)
    assert res.exit_code == 2 and "3 classes" in res.output and "4" in res.output
    shutil.rmtree(out)
