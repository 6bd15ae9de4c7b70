"""The summary table of ``rkd run`` fits a terminal of 100 columns without splitting a path."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from rkd.pipeline import RunResult, StageResult
from rkd.pipeline.render import metrics_text, run_table, shown_artifact, verdict_text

GATES = {"drop.robust_acc<=0.03": True, "robust_acc>=0.40": False, "clean_acc>=0.80": True}


def _result(run_dir: Path, outside: Path) -> RunResult:
    stages = [
        StageResult("teacher", "given", 0.0, str(outside), {}),
        StageResult("distill", "ran", 1234.5, str(run_dir / "student" / "model.safetensors"),
                    {"holdout_clean_acc": 0.8123, "holdout_robust_acc": 0.4567}),
        StageResult("export", "skipped", 0.0, str(run_dir / "bundle" / "model.onnx"),
                    {"max_abs_diff": 1.2e-6, "top1_agreement": 1.0}),
        StageResult("engine", "ran", 88.0, str(run_dir / "bundle" / "model.nvidia-h100-80gb-hbm3.int8.engine"),
                    {"gpu": "NVIDIA H100 80GB HBM3", "tensorrt": "10.3.0"}),
        StageResult("verify", "resumed", 99.9, str(run_dir / "verify" / "verify.json"),
                    {"clean_acc": 0.81, "robust_acc": 0.39, "verdict": "fail", "gates": GATES,
                     "drop_robust_acc": 0.021}),
    ]
    report = {"passed": False, "verdict": "fail", "clean_acc": 0.81, "robust_acc": 0.39, "n": 1000,
              "norm": "linf", "eps_text": "8/255"}
    return RunResult(run_dir, stages, report)


def _render(renderable: object, width: int = 100) -> list[str]:
    console = Console(width=width, record=True, color_system=None)
    console.print(renderable, highlight=False)
    return console.export_text().splitlines()


def test_the_table_fits_100_columns_and_keeps_every_path_on_one_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "cifar10-resnet18-to-mobilenetv2"
    outside = Path("checkpoints") / "resnet18-pgd-at-teacher.safetensors"  # as a recipe names it
    result = _result(run_dir, outside)
    lines = _render(run_table(result, "cifar10-resnet18-to-mobilenetv2"))
    assert max(len(line) for line in lines) <= 100
    text = "\n".join(lines)
    for shown in ("student/model.safetensors", "bundle/model.onnx", "verify/verify.json",
                  "bundle/model.nvidia-h100-80gb-hbm3.int8.engine", str(outside)):
        assert shown in text, shown  # whole, on one line
    for gate in GATES:  # the metrics wrap between items, never inside a gate
        assert gate in text, gate


def test_artifacts_are_shown_relative_to_the_run_directory(tmp_path: Path) -> None:
    assert shown_artifact(str(tmp_path / "bundle" / "model.onnx"), tmp_path) == "bundle/model.onnx"
    assert shown_artifact("/elsewhere/t.safetensors", tmp_path) == "/elsewhere/t.safetensors"
    assert shown_artifact(None, tmp_path) == "-"


def test_a_path_too_long_for_any_layout_is_folded_not_cut(tmp_path: Path) -> None:
    long = "/" + "/".join(["a-rather-long-folder-name"] * 6) + "/teacher.safetensors"
    result = RunResult(tmp_path, [StageResult("teacher", "given", 0.0, long, {})], None)
    lines = _render(run_table(result, "x"))
    assert max(len(line) for line in lines) <= 100
    assert long in "".join(line.strip("│ ") for line in lines)


def test_metrics_and_verdict_text(tmp_path: Path) -> None:
    assert metrics_text({"a": 0.12345, "b": None, "gates": {"g1": True, "g2": False}, "n": 3}) == (
        "a 0.123, g1 pass, g2 FAIL, n 3")
    result = _result(tmp_path, tmp_path / "t")
    line = verdict_text(result)
    assert line is not None and "FAIL" in line and "robust 39.0%" in line
    assert verdict_text(RunResult(tmp_path, [], None)) is None
    assert "UNRELIABLE" in verdict_text(RunResult(tmp_path, [], {**result.report, "verdict": "unreliable"}))
