"""Gates that can fail on a useless model, and artifacts that do not fit the data, refused in one line.

A gate set without a floor on robust accuracy (only drops and agreement) passes a model without robustness: it is
refused (exit 2) unless ``--allow-no-floor`` / ``verify.allow_no_floor`` opts out, and the report then says so.
Every shipped recipe that verifies carries a floor (smoke, a plumbing run, opts out). A bundle verified on data
with other class names, an engine with another number of outputs than the data's classes, and an ONNX model
whose input is not the data's image shape are exit 2 naming both sides. The models are built here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from rkd.cli.verify import verify
from rkd.config import load_profile, load_recipe
from rkd.errors import RecipeError
from rkd.verify.gates import parse_gate

REPO = Path(__file__).parents[2]
app = typer.Typer()
app.command("verify")(verify)


@app.callback()
def _root() -> None:
    """A group, so args start with the command name as with `rkd`."""


runner = CliRunner()
DATA = "synthetic:n=64"
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _run(*args: str):
    return runner.invoke(app, ["verify", *args])


class _Linear(nn.Module):
    """A classifier of flattened pixels: random weights, so no robustness at all."""

    def __init__(self, channels: int = 3, side: int = 32, classes: int = 10) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(channels * side * side, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) * 50.0


def _onnx(model: nn.Module, path: Path, shape: tuple[int, int, int] = (3, 32, 32)) -> Path:
    torch.onnx.export(model.eval(), (torch.rand(2, *shape),), str(path), input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamo=False,
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


@pytest.fixture(scope="module")
def useless(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _onnx(_Linear(), tmp_path_factory.mktemp("floor") / "useless.onnx")


def _line(res) -> str:
    return " ".join(res.output.split())


def test_gates_without_a_floor_are_refused_and_the_opt_out_is_reported(useless: Path, tmp_path: Path) -> None:
    base = ["--engine", str(useless), "--data", DATA, "--n", "32", "--attacks", "fgsm,pgd5",
            "--gate", "drop.robust_acc<=0.03", "--gate", "agreement.clean>=0.99"]
    refused = _run(*base, "--report", str(tmp_path / "refused"))
    assert refused.exit_code == 2, refused.output
    assert "no gate sets a floor on robust accuracy" in _line(refused)
    assert "--gate 'robust_acc>=X'" in _line(refused) and "--allow-no-floor" in _line(refused)
    assert not (tmp_path / "refused" / "verify.json").exists()
    profile = _run("--engine", str(useless), "--data", DATA, "--profile", str(REPO / "export" / "x86-cpu-int8.yaml"),
                   "--report", str(tmp_path / "profile"))
    assert profile.exit_code == 2 and "no gate sets a floor" in _line(profile)  # the profiles carry no floor

    allowed = _run(*base, "--allow-no-floor", "--report", str(tmp_path / "allowed"))
    assert allowed.exit_code == 0, allowed.output  # a model without robustness passes drops and agreement ...
    rep = json.loads((tmp_path / "allowed" / "verify.json").read_text())
    assert rep["robust_acc"] < 0.05 and rep["passed"]
    note = "these gates cannot fail for a non-robust model"
    assert note in rep["floor"]["note"] and rep["floor"]["gates"] == []  # ... and every report says so
    assert note in (tmp_path / "allowed" / "verify.md").read_text()
    assert note in (tmp_path / "allowed" / "verify.junit.xml").read_text()
    assert note in _line(allowed)

    floored = _run(*base, "--gate", "robust_acc>=0.05", "--report", str(tmp_path / "floored"))
    assert floored.exit_code == 1, floored.output  # with a floor the same model fails
    rep = json.loads((tmp_path / "floored" / "verify.json").read_text())
    assert rep["floor"] == {"gates": ["robust_acc>=0.05"], "allow_no_floor": False, "note": None}


def test_what_counts_as_a_floor() -> None:
    from rkd.verify.gates import is_floor

    floors = ["robust_acc>=0.4", "lower.robust_acc>=0.3", "autoattack_acc>0.2", "worst_class.robust_acc>=0.05",
              "pgd20_acc>=40%"]
    others = ["robust_acc>=0", "clean_acc>=0.9", "drop.robust_acc<=0.03", "agreement.clean>=0.99", "warnings==0",
              "robust_acc<=0.9", "lower.clean_acc>=0.5"]
    assert all(is_floor(parse_gate(g)) for g in floors)
    assert not any(is_floor(parse_gate(g)) for g in others)


def test_every_shipped_recipe_that_verifies_has_a_floor_and_profiles_cannot_opt_out(tmp_path: Path) -> None:
    from rkd.verify.gates import is_floor

    verifying = 0
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        rec = load_recipe(path)
        if rec.deploy is None:
            continue
        verifying += 1
        cfg = rec.verify or load_profile(rec.deploy.profile, base=REPO).verify
        has_floor = any(is_floor(parse_gate(g)) for g in cfg.gates)
        assert has_floor or (rec.name == "smoke" and cfg.allow_no_floor), path.name
    assert verifying >= 12
    quick = load_recipe(REPO / "recipes" / "quickstart.yaml").verify
    assert quick is not None and "robust_acc>=0.03" in quick.gates  # measured: 6.6% worst case (docs/RESULTS.md)
    for path in sorted((REPO / "export").glob("*.yaml")):  # profiles stay floor-free: a floor is per model
        assert not any(is_floor(parse_gate(g)) for g in load_profile(path).verify.gates), path.name
    text = (REPO / "export" / "x86-cpu-int8.yaml").read_text().replace("fail_on_warnings: false",
                                                                      "fail_on_warnings: false\n  allow_no_floor: true")
    (tmp_path / "mine.yaml").write_text(text.replace("name: x86-cpu-int8", "name: mine"))
    with pytest.raises(RecipeError, match="allow_no_floor is a recipe's or the command line's choice"):
        load_profile(tmp_path / "mine.yaml")


def test_rkd_run_refuses_a_recipe_without_a_floor_before_anything_runs(tmp_path: Path) -> None:
    from rkd.errors import UsageError
    from rkd.pipeline import Pipeline

    rec = load_recipe(REPO / "recipes" / "smoke.yaml", ["verify.allow_no_floor=false"])
    with pytest.raises(UsageError, match="no gate sets a floor on robust accuracy .* verify.allow_no_floor: true"):
        Pipeline(rec, run_dir=tmp_path / "run", profile_base=REPO)
    assert not (tmp_path / "run" / "teacher").exists()
    rec = load_recipe(REPO / "recipes" / "smoke.yaml", ["verify.allow_no_floor=false",
                                                        "verify.gates=['drop.robust_acc<=0.5','robust_acc>=0.01']"])
    Pipeline(rec, run_dir=tmp_path / "floored", profile_base=REPO)  # a floor: accepted


def test_a_bundle_verified_on_data_with_other_class_names_is_exit_2(tmp_path: Path) -> None:
    from rkd.deploy.export import export_bundle
    from rkd.models import create_model, save_checkpoint

    meta = {"data": {"dataset": "cifar10", "classes": CIFAR10}, "threat": {"norm": "linf", "eps": 8 / 255}}
    ckpt = save_checkpoint(create_model("tiny_cnn", num_classes=10), tmp_path / "s.safetensors", metadata=meta)
    export_bundle(ckpt, tmp_path / "bundle", parity_data=("synthetic", {}), parity_n=8)
    res = _run("--engine", str(tmp_path / "bundle" / "model.onnx"), "--data", DATA, "--n", "8", "--attacks", "fgsm",
               "--gate", "robust_acc>=0.1", "--report", str(tmp_path / "r"))
    assert res.exit_code == 2, res.output
    line = _line(res)
    assert "trained on classes airplane, automobile, bird, cat, ... (10)" in line
    assert "synthetic has class0, class1, class2, class3, ... (10)" in line
    assert "Traceback" not in res.output


def test_an_engine_with_another_number_of_outputs_than_classes_is_exit_2(tmp_path: Path) -> None:
    seven = _onnx(_Linear(classes=7), tmp_path / "seven.onnx")
    res = _run("--engine", str(seven), "--data", DATA, "--n", "8", "--attacks", "fgsm", "--gate", "robust_acc>=0.1",
               "--report", str(tmp_path / "r"))
    assert res.exit_code == 2, res.output
    assert "'seven.onnx' outputs 7 scores per image but synthetic has 10 classes" in _line(res)


@pytest.mark.parametrize(("shape", "declared"), [((1, 32, 32), "(N, 1, 32, 32)"), ((3, 64, 64), "(N, 3, 64, 64)")])
def test_a_model_of_another_input_shape_names_both_shapes(
    shape: tuple[int, int, int], declared: str, tmp_path: Path
) -> None:
    model = _onnx(_Linear(channels=shape[0], side=shape[1]), tmp_path / "other.onnx", shape)
    res = _run("--engine", str(model), "--data", DATA, "--n", "8", "--attacks", "fgsm", "--gate", "robust_acc>=0.1",
               "--report", str(tmp_path / "r"))
    assert res.exit_code == 2, res.output
    line = _line(res)
    assert f"'other.onnx' takes inputs shaped {declared} but synthetic test images are (N, 3, 32, 32)" in line
    assert "INVALID_ARGUMENT" not in line
