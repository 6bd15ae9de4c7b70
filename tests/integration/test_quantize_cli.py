"""`rkd quantize` end to end on CPU: a tiny checkpoint trained on synthetic data, the bundle it writes, the
refusals (exit 2), and (slow) surrogate agreement on real CIFAR-10 for both schemes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from rkd.cli.quantize import quantize
from rkd.data import load_dataset
from rkd.deploy.bundle import read_manifest
from rkd.deploy.export import export_bundle
from rkd.models import create_model, save_checkpoint
from rkd.quantize.ort_static import quantize_onnx
from rkd.quantize.surrogate import agreement, build_surrogate, load_surrogate

app = typer.Typer()
app.command("quantize")(quantize)


@app.callback()
def _root() -> None:
    """A group, so args start with the command name as with `rkd`."""


runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, ["quantize", *args], catch_exceptions=False)


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int = 64) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=torch.Generator().manual_seed(step))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _checkpoint(path: Path, dataset: str) -> Path:
    data = load_dataset("synthetic", "train")
    model = _fit(create_model("tiny_cnn", width=0.5), data.to_float(), data.y, steps=40)
    meta = {"data": {"dataset": dataset, "classes": list(data.classes)},
            "threat": {"norm": "linf", "eps": 8 / 255, "alpha": 2 / 255}}
    return save_checkpoint(model, path, metadata=meta)


@pytest.fixture(scope="module")
def synthetic_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "student.safetensors", "synthetic")


def test_quantize_cli_writes_int8_model_surrogate_and_manifest(synthetic_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    res = _run(str(synthetic_ckpt), "--calib-data", "synthetic", "--calib-n", "128", "--eval-n", "32",
               "--out", str(out), "--debug-layers")
    assert res.exit_code == 0, res.output
    assert "INT8 (ONNX Runtime)" in res.output and "pgd20" in res.output and "worst" in res.output
    manifest = read_manifest(out)  # sha256 of every file checked
    assert {"model.onnx", "model.int8.onnx", "surrogate.int8.safetensors", "surrogate.int8.json"} \
        == set(manifest["files"])
    section = manifest["quantize"]
    assert section["profile"] == "cpu" and section["settings"]["activation_type"] == "uint8"
    assert section["calibration"] | {"indices_sha256": None} == {
        "dataset": "synthetic", "options": {}, "split": "train", "selection": "random", "seed": 0, "n": 128,
        "indices_sha256": None, "synthetic": True}
    ev = section["evaluation"]
    assert ev["data"]["n"] == 32 and ev["threat_model"]["attack"] == "pgd20"
    for side in ("float", "int8"):
        for name in ("clean", "pgd20"):
            block = ev[side][name]
            assert block["n"] == 32 and block["ci95"][0] <= block["acc"] <= block["ci95"][1]
        assert ev[side]["pgd20"]["correct"] <= ev[side]["clean"]["correct"]
    assert ev["agreement"]["clean"]["top1_agreement"] >= 0.99 and section["surrogate"]["ok"]
    assert section["sizes"]["model.int8.onnx"] == manifest["files"]["model.int8.onnx"]["bytes"] > 0
    layers = section["debug_layers"]
    assert layers and layers[0]["sqnr_db"] <= layers[-1]["sqnr_db"]
    assert section["checkpoint"]["sha256"] == manifest["source"]["sha256"]
    surrogate = load_surrogate(out / "surrogate.int8.safetensors")
    assert surrogate.source["sha256"] == manifest["files"]["model.int8.onnx"]["sha256"]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging or temp dirs left

    again = _run(str(synthetic_ckpt), "--calib-data", "synthetic", "--calib-n", "64", "--eval-n", "0",
                 "--out", str(out))
    assert again.exit_code == 2 and "already has model.int8.onnx" in again.output
    forced = _run(str(synthetic_ckpt), "--calib-data", "synthetic", "--calib-n", "64", "--eval-n", "0",
                  "--out", str(out), "--scheme", "trt", "--method", "percentile", "--force")
    assert forced.exit_code == 0, forced.output
    section = read_manifest(out)["quantize"]
    assert section["settings"]["scheme"] == "trt"
    assert section["settings"]["calibration_method"] == "percentile"
    assert section["evaluation"] is None and section["surrogate"]["agreement_on"].startswith("calibration")
    assert section["bundle_action"] == "reused"


def test_quantize_profile_is_a_deprecated_alias_of_scheme(synthetic_ckpt: Path, tmp_path: Path) -> None:
    args = [str(synthetic_ckpt), "--calib-data", "synthetic", "--calib-n", "32", "--eval-n", "0"]
    clash = _run(*args, "--out", str(tmp_path / "clash"), "--profile", "cpu", "--scheme", "trt")
    assert clash.exit_code == 2 and "give only --scheme" in clash.output and not (tmp_path / "clash").exists()
    res = _run(*args, "--out", str(tmp_path / "b"), "--profile", "trt")
    assert res.exit_code == 0, res.output
    assert "--profile is deprecated: use --scheme trt" in " ".join(res.output.split())
    section = read_manifest(tmp_path / "b")["quantize"]
    assert section["settings"]["scheme"] == "trt" and section["profile"] == "trt"


def test_quantize_cli_refuses_bad_calibration_data(synthetic_ckpt: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.arange(64) % 10
    wrong_range = tmp_path / "range.npz"
    np.savez(wrong_range, x=rng.random((64, 32, 32, 3), dtype=np.float32) * 255.0, y=y)
    res = _run(str(synthetic_ckpt), "--calib-data", f"npz:{wrong_range}", "--calib-n", "32",
               "--out", str(tmp_path / "b1"))
    assert res.exit_code == 2 and "normalisation is inside the model" in res.output
    assert not (tmp_path / "b1").exists()

    out = tmp_path / "b2"
    export_bundle(synthetic_ckpt, out, parity_data=("synthetic", {}), parity_n=8)  # a 32x32 bundle
    small = tmp_path / "small.npz"
    np.savez(small, x=rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8), y=y)
    res = _run(str(synthetic_ckpt), "--calib-data", f"npz:{small}", "--calib-n", "32", "--out", str(out))
    assert res.exit_code == 2 and "(3, 16, 16), the model takes (3, 32, 32)" in res.output
    assert "quantize" not in read_manifest(out)

    res = _run(str(synthetic_ckpt), "--calib-data", "synthetic", "--calib-n", "10000", "--out", str(out))
    assert res.exit_code == 2 and "only 256 training images" in res.output
    res = _run(str(synthetic_ckpt), "--calib-data", "synthetic", "--eval-attacks", "autoattack",
               "--out", str(out))
    assert res.exit_code == 2 and "rkd verify" in res.output


def test_quantize_cli_refuses_synthetic_calibration_of_a_real_model(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "real.safetensors", "cifar10")
    res = _run(str(ckpt), "--calib-data", "synthetic", "--out", str(tmp_path / "b"))
    assert res.exit_code == 2 and "needs real images" in res.output and "(cifar10)" in res.output
    assert not (tmp_path / "b").exists()


def test_quantize_cli_refuses_a_bundle_of_another_checkpoint(synthetic_ckpt: Path, tmp_path: Path) -> None:
    torch.manual_seed(5)  # different weights, same architecture
    model = create_model("tiny_cnn", width=0.5)
    other = save_checkpoint(model, tmp_path / "other.safetensors",
                            metadata={"data": {"dataset": "synthetic"}})
    out = tmp_path / "bundle"
    export_bundle(other, out, parity_data=("synthetic", {}), parity_n=8)
    res = _run(str(synthetic_ckpt), "--calib-data", "synthetic", "--calib-n", "32", "--eval-n", "0",
               "--out", str(out))
    assert res.exit_code == 2 and "exported from another checkpoint" in res.output
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    res = _run(str(synthetic_ckpt), "--calib-data", "synthetic", "--calib-n", "32", "--eval-n", "0",
               "--out", str(out), "--force", "--exclude", "NoSuchNode")  # fails after the re-export
    assert res.exit_code == 2 and "cannot exclude node 'NoSuchNode'" in res.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old bundle is untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # and nothing left beside it
    res = _run(str(synthetic_ckpt), "--calib-data", "synthetic", "--calib-n", "32", "--eval-n", "0",
               "--out", str(out), "--force")
    assert res.exit_code == 0, res.output
    manifest = read_manifest(out)
    assert manifest["quantize"]["bundle_action"] == "re-exported"
    sha = json.loads(synthetic_ckpt.with_suffix(".json").read_text())["sha256"]
    assert manifest["source"]["sha256"] == sha


@pytest.mark.slow
def test_surrogate_agrees_with_int8_on_real_cifar10(cifar10_root: Path, tmp_path: Path) -> None:
    from rkd.deploy.onnx_export import export_onnx

    train = load_dataset("cifar10", "train", root=cifar10_root)
    test = load_dataset("cifar10", "test", root=cifar10_root)
    idx = torch.arange(4000)
    model = _fit(create_model("resnet18", width=0.125), train.to_float(idx), train.y[idx], steps=60)
    path = export_onnx(model, tmp_path / "model.onnx")
    calib = train.to_float(torch.arange(10000, 10256)).numpy()
    x = test.to_float(torch.arange(500))
    for scheme in ("trt", "cpu"):
        q = tmp_path / f"model.{scheme}.onnx"
        quantize_onnx(path, q, calib, scheme=scheme)
        result = agreement(build_surrogate(q), q, x)
        assert result["n"] == 500 and result["top1_agreement"] >= 0.99, (scheme, result)


def test_quantize_never_replaces_a_folder_that_is_not_a_bundle(synthetic_ckpt: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    args = [str(synthetic_ckpt), "--calib-data", "synthetic", "--calib-n", "32", "--eval-n", "0", "--out", str(run_dir)]
    for extra in ([], ["--force"]):
        res = _run(*args, *extra)
        assert res.exit_code == 2 and "is not an rkd bundle" in res.output, res.output
        assert [p.name for p in run_dir.iterdir()] == ["notes.txt"]
    fresh = tmp_path / "fresh"
    res = _run(*args[:-1], str(fresh), "--exclude", "NoSuchNode")
    assert res.exit_code == 2 and not fresh.exists()  # a failed first quantization leaves no half bundle


def test_an_unknown_device_is_refused_with_or_without_qat(synthetic_ckpt: Path, tmp_path: Path) -> None:
    args = [str(synthetic_ckpt), "--calib-data", "synthetic", "--calib-n", "32", "--eval-n", "0",
            "--out", str(tmp_path / "b"), "--device", "gpu"]
    res = _run(*args)
    assert res.exit_code == 2 and "unknown device 'gpu'" in res.output and not (tmp_path / "b").exists()


def test_synthetic_evaluation_images_for_a_real_data_model_are_refused_naming_the_field(tmp_path: Path) -> None:
    from rkd.errors import UsageError
    from rkd.quantize.pipeline import run_quantize
    from rkd.quantize.request import QuantizeRequest

    ckpt = _checkpoint(tmp_path / "student.safetensors", "cifar10")
    req = QuantizeRequest(checkpoint=ckpt, bundle=tmp_path / "bundle", eval_n=8, eval_data=("synthetic", {}),
                          calib_data=("synthetic", {}))
    with pytest.raises(UsageError, match=r"^--calib-data synthetic: calibration"):
        run_quantize(req)  # calibration is checked first
    req = QuantizeRequest(checkpoint=ckpt, bundle=tmp_path / "bundle", eval_n=8, eval_data=("synthetic", {}),
                          calib_data=("imagefolder", {"root": str(tmp_path)}))
    with pytest.raises(UsageError, match=r"^eval_data synthetic: evaluation .*set eval_n to 0") as err:
        run_quantize(req)
    assert "--eval-data" not in str(err.value) and not (tmp_path / "bundle").exists()
