"""`rkd teacher` and `rkd eval` on the real CIFAR-10 (development copy; skipped when absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rkd.cli.app import app

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_teacher_then_eval_on_real_cifar10(cifar10_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "teacher"
    res = runner.invoke(app, [
        "teacher", str(REPO / "recipes" / "teacher-cifar10-cpu.yaml"), "--data-root", str(cifar10_root),
        "--out", str(out), "--device", "cpu",
        "--set", "data.train_subset=768", "--set", "data.holdout=64", "--set", "teacher.model.width=0.125",
        "--set", "teacher.method.steps=2", "--set", "teacher.train.epochs=2", "--set", "teacher.train.eval_n=64",
        "--set", "teacher.train.milestones=null", "--set", "teacher.train.eval_every=1",
    ], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics if m.get("event") == "eval"] == [1, 2]
    report = tmp_path / "eval.json"
    res = runner.invoke(app, [
        "eval", str(out / "model.safetensors"), "--data", "cifar10", "--data-root", str(cifar10_root),
        "--n", "64", "--attacks", "fgsm,pgd5", "--device", "cpu", "--report", str(report),
    ], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rep = json.loads(report.read_text())
    assert rep["data"]["dataset"] == "cifar10" and rep["n"] == 64
    assert rep["attacks"]["pgd5"]["acc"] <= rep["attacks"]["clean"]["acc"]
    assert rep["clean_acc"] > 0.1  # better than chance after two short epochs on real images
