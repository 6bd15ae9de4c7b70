"""Quantization-aware training (`rkd quantize --qat`): the trainable fake-quant student of a QDQ file, the
write-back onto the file's INT8 grid, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import typer
from onnx import numpy_helper
from torch import nn
from typer.testing import CliRunner

from rkd.cli.quantize import quantize
from rkd.data import load_dataset
from rkd.deploy.bundle import read_manifest
from rkd.deploy.onnx_export import export_onnx
from rkd.deploy.runtimes import OnnxRuntime
from rkd.models import save_checkpoint
from rkd.quantize.ort_static import quantize_onnx
from rkd.quantize.qat import QatTraining, build_qat_student, train_qat, write_back
from rkd.quantize.request import QatOptions
from rkd.quantize.surrogate import build_surrogate
from rkd.testing import train_tiny_classifier


def _train_tiny(steps: int = 60):
    return train_tiny_classifier(steps)


@pytest.fixture(scope="module")
def ptq(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("qat")
    model = _train_tiny()
    float_path = export_onnx(model, tmp / "model.onnx")
    train = load_dataset("synthetic", "train", n=512)
    calib = train.to_float(torch.arange(256)).numpy()
    out: dict[str, Any] = {"model": model, "tmp": tmp, "train": train,
                           "x": load_dataset("synthetic", "test", n=256).to_float()[:64]}
    for scheme in ("cpu", "trt"):
        path = tmp / f"model.{scheme}.onnx"
        quantize_onnx(float_path, path, calib, scheme=scheme)
        out[scheme] = path
    return out


def _inits(path: Path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize("scheme", ["cpu", "trt"])
def test_trainable_student_equals_ptq_surrogate_before_training(ptq: dict[str, Any], scheme: str) -> None:
    frozen = build_surrogate(ptq[scheme])
    student = build_qat_student(ptq[scheme])
    assert len(student.weight_keys) >= 6  # int8 weights and int32 biases
    assert all(getattr(student, k).requires_grad for k in student.weight_keys.values())
    with torch.no_grad():
        assert torch.equal(student(ptq["x"]), frozen(ptq["x"]))


def test_weights_get_gradients(ptq: dict[str, Any]) -> None:
    student = build_qat_student(ptq["cpu"]).train()
    loss = nn.functional.cross_entropy(student(ptq["x"][:16]), torch.zeros(16, dtype=torch.long))
    loss.backward()
    grads = [getattr(student, k).grad for k in student.weight_keys.values()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) > 0 for g in grads) >= len(grads) - 1


@pytest.mark.parametrize("scheme", ["cpu", "trt"])
def test_write_back_of_unchanged_weights_is_identical(ptq: dict[str, Any], scheme: str, tmp_path: Path) -> None:
    student = build_qat_student(ptq[scheme])
    info = write_back(student, ptq[scheme], tmp_path / "same.onnx")
    assert info["changed"] == 0 and info["initializers"] == len(student.weight_keys)
    before, after = _inits(ptq[scheme]), _inits(tmp_path / "same.onnx")
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert after[name].dtype == value.dtype and np.array_equal(after[name], value), name


def test_trained_weights_written_back_run_in_onnx_runtime(ptq: dict[str, Any], tmp_path: Path) -> None:
    train = ptq["train"].subset(torch.arange(128))
    training = QatTraining(QatOptions(method="pgd_at", epochs=1, lr=0.05, steps=2), batch_size=32)
    student, info = train_qat(ptq["cpu"], train, training, device="cpu", seed=0)
    assert info["steps_per_epoch"] == 4 and info["train_n"] == 128
    out = tmp_path / "qat.onnx"
    written = write_back(student, ptq["cpu"], out)
    assert written["changed"] >= 1  # training moved some weight across a grid point
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    x = ptq["x"]
    with torch.no_grad():
        ours = student.eval()(x)
    ref = OnnxRuntime(out).predict(x)
    agree = float((ours.argmax(1) == ref.argmax(1)).float().mean())
    assert agree >= 0.99, agree
    # and the rebuilt surrogate of the new file is the trained student
    with torch.no_grad():
        assert torch.allclose(build_surrogate(out)(x), ours, atol=1e-5)


# ------------------------------------------------------------------------------------------------ CLI
app = typer.Typer()
app.command("quantize")(quantize)


@app.callback()
def _root() -> None:
    """A group, so args start with the command name as with `rkd`."""


@pytest.fixture(scope="module")
def synthetic_ckpt(ptq: dict[str, Any]) -> Path:
    data = load_dataset("synthetic", "train")
    meta = {"data": {"dataset": "synthetic", "classes": list(data.classes)},
            "threat": {"norm": "linf", "eps": 8 / 255, "alpha": 2 / 255}}
    return save_checkpoint(ptq["model"], ptq["tmp"] / "student.safetensors", metadata=meta)


def test_cli_qat_pgd_at_writes_qat_section(synthetic_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    res = CliRunner().invoke(app, [
        "quantize", str(synthetic_ckpt), "--calib-data", "synthetic", "--calib-n", "128", "--eval-n", "32",
        "--eval-attacks", "pgd5", "--out", str(out), "--qat", "--epochs", "1", "--qat-method", "pgd_at",
        "--train-n", "64", "--qat-steps", "2", "--device", "cpu"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "PTQ vs QAT" in res.output
    manifest = read_manifest(out)
    assert {"model.int8.onnx", "model.int8.ptq.onnx"} <= set(manifest["files"])
    q = manifest["quantize"]["qat"]
    assert q["method"] == "pgd_at" and q["epochs"] == 1 and q["lr"] == 0.01 and q["train_n"] == 64
    assert q["method_config"]["steps"] == 2 and q["onnx_checker"] == "passed"
    for when in ("before", "after"):
        assert set(q[when]["int8"]) == {"clean", "pgd5"} and q[when]["int8"]["clean"]["n"] == 32
    assert q["after"]["int8"] == manifest["quantize"]["evaluation"]["int8"]
    assert json.dumps(q)  # JSON-clean
    # quantizing again without --qat: the PTQ file of the QAT run no longer belongs to the bundle
    res = CliRunner().invoke(app, [
        "quantize", str(synthetic_ckpt), "--calib-data", "synthetic", "--calib-n", "128", "--eval-n", "0",
        "--out", str(out), "--force", "--device", "cpu"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    manifest = read_manifest(out)
    assert "model.int8.ptq.onnx" not in manifest["files"] and not (out / "model.int8.ptq.onnx").exists()
    assert manifest["quantize"]["qat"] is None and "model.int8.onnx" in manifest["files"]


def test_cli_qat_adv_path_without_teacher_exits_2(synthetic_ckpt: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, [
        "quantize", str(synthetic_ckpt), "--calib-data", "synthetic", "--out", str(tmp_path / "b"), "--qat"])
    assert res.exit_code == 2, res.output
    assert "--teacher" in res.output
    assert not (tmp_path / "b").exists()


def test_adv_path_with_teacher_trains_the_fake_quant_student(ptq: dict[str, Any], tmp_path: Path) -> None:
    train = ptq["train"].subset(torch.arange(64))
    before = {k: getattr(build_qat_student(ptq["cpu"]), k).detach().clone()
              for k in build_qat_student(ptq["cpu"]).weight_keys.values()}
    training = QatTraining(QatOptions(method="adv_path", epochs=1, lr=0.05, steps=2), teacher=ptq["model"],
                           batch_size=32)
    student, info = train_qat(ptq["cpu"], train, training, device="cpu", seed=0)
    assert info["method"]["name"] == "adv_path" and info["method"]["steps"] == 2
    assert any(not torch.equal(getattr(student, k), v) for k, v in before.items())
    write_back(student, ptq["cpu"], tmp_path / "qat.onnx")
    assert OnnxRuntime(tmp_path / "qat.onnx").predict(ptq["x"][:8]).shape == (8, 10)


def test_cli_qat_unknown_method_exits_2(synthetic_ckpt: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, [
        "quantize", str(synthetic_ckpt), "--calib-data", "synthetic", "--out", str(tmp_path / "b"), "--qat",
        "--qat-method", "nope"])
    assert res.exit_code == 2, res.output
    assert not (tmp_path / "b").exists()
