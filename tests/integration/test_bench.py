"""`rkd bench` on a tiny real bundle (torch checkpoint, ONNX Runtime FP32 and INT8) and, through the fake tensorrt
module, a TensorRT engine in it: every runnable runtime measured, the rest listed as skipped, bad input exit 2."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from rkd.cli.app import app
from rkd.deploy import bench as bench_module
from rkd.deploy import tensorrt_build
from rkd.deploy.bench import MIN_ROUNDS, Timing, bench_bundle, measure, percentile
from rkd.deploy.bundle import read_manifest, update_bundle
from rkd.models import create_model, save_checkpoint
from rkd.quantize.pipeline import quantize_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from fake_tensorrt import make_fake_tensorrt  # noqa: E402

runner = CliRunner()
FAST = ("--iters", "3", "--warmup", "1", "--batch-size", "8")


def _run(*args: str) -> Any:
    return runner.invoke(app, ["bench", *args], catch_exceptions=False, env={"COLUMNS": "100"})


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny CNN (timing does not need accuracy), exported and INT8-quantized."""
    root = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    ckpt = save_checkpoint(create_model("tiny_cnn", width=0.5), root / "student.safetensors",
                           metadata={"data": {"dataset": "synthetic"}})
    quantize_checkpoint(ckpt, root / "bundle", calib_data=("synthetic", {}), calib_n=32, eval_n=0)
    return root / "bundle"


def _copy(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    return copy


def _one_error_line(res: Any) -> str:
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    return lines[0]


def test_every_runtime_is_measured_and_the_json_records_how(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    res = _run(str(bundle), *FAST, "--threads", "1", "--json", str(out))
    assert res.exit_code == 0, res.output
    assert max(len(line) for line in res.output.splitlines()) <= 100
    for word in ("torch", "onnx-fp32", "onnx-int8", "p50 ms", "img/s"):
        assert word in res.output
    report = json.loads(out.read_text())
    assert report["format"] == "rkd-bench" and report["baseline"] == "onnx-fp32"
    assert (report["batch_size"], report["rounds"], report["threads"], report["input_shape"]) == (8, 3, 1, [3, 32, 32])
    rows = report["runtimes"]
    assert list(rows) == ["torch", "onnx-fp32", "onnx-int8"]
    files = read_manifest(bundle)["files"]
    for name, row in rows.items():
        assert row["status"] == "measured" and row["reason"] is None
        lat, thr = row["latency_ms"], row["throughput"]
        assert all(math.isfinite(v) and v > 0 for v in (*lat.values(), *thr.values())), name
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["max"] and thr["min"] <= thr["median"] <= thr["max"]
        assert (row["threads"], row["batch_size"], row["rounds"], row["input_shape"], row["device"]) == (
            1, 8, 3, [3, 32, 32], "cpu")
        assert all(v > 0 for v in row["vs_baseline"].values())
    assert rows["onnx-fp32"]["vs_baseline"] == {"latency_speedup": 1.0, "throughput_ratio": 1.0}
    assert rows["onnx-int8"]["sha256"] == files["model.int8.onnx"]["sha256"]
    assert rows["torch"]["sha256"] == read_manifest(bundle)["source"]["sha256"]
    assert rows["onnx-int8"]["details"]["session_config"] == {"session.intra_op.allow_spinning": "0"}


def test_named_runtimes_run_with_the_baseline(bundle: Path) -> None:
    report = bench_bundle(bundle, runtimes=["onnx-int8"], iters=2, warmup=0, batch_size=4)
    assert list(report.runtimes) == ["onnx-fp32", "onnx-int8"]
    timed = bench_bundle(bundle, runtimes=["onnx-fp32"], seconds=0.01, warmup=0, batch_size=2)
    assert timed.rounds >= MIN_ROUNDS and timed.runtimes["onnx-fp32"].rounds == timed.rounds


def test_an_engine_without_tensorrt_is_listed_as_skipped(bundle: Path, tmp_path: Path) -> None:
    copy = _copy(bundle, tmp_path)
    engine = tmp_path / "model.nvidia-fake-gpu.int8.engine"
    engine.write_bytes(b"not an engine this machine can run")
    update_bundle(copy, add={engine.name: engine}, sections={"engines": {engine.name: {"precision": "int8"}}})
    out = tmp_path / "bench.json"
    res = _run(str(copy), *FAST, "--json", str(out))
    assert res.exit_code == 0, res.output
    row = json.loads(out.read_text())["runtimes"]["trt-int8"]
    assert row["status"] == "skipped" and "tensorrt" in row["reason"].lower() and row["latency_ms"] is None
    assert row["file"] == engine.name and "skipped trt-int8" in res.output
    if not bench_module._tensorrt_missing():
        pytest.skip("tensorrt and a GPU are here: what follows is about a machine without them")
    named = _run(str(copy), *FAST, "--runtime", "trt-int8")
    assert named.exit_code == 3 and "tensorrt" in _one_error_line(named).lower()


def test_a_changed_bundle_file_is_refused(bundle: Path, tmp_path: Path) -> None:
    copy = _copy(bundle, tmp_path)
    (copy / "model.int8.onnx").write_bytes((copy / "model.int8.onnx").read_bytes() + b"\0")
    res = _run(str(copy), *FAST)
    assert res.exit_code == 2 and "sha256 mismatch for 'model.int8.onnx'" in _one_error_line(res)


@pytest.mark.parametrize(("args", "message"), [
    (("--batch-size", "0"), "batch size must be a positive integer"),
    (("--iters", "3", "--seconds", "1"), "not both"),
    (("--seconds", "-1"), "--seconds must be a positive number"),
    (("--threads", "0"), "--threads must be a positive integer"),
    (("--runtime", "nope"), "unknown runtime 'nope': this bundle has torch, onnx-fp32, onnx-int8"),
    (("--runtime", "onnx-int8-ptq"), "has no model.int8.ptq.onnx"),
    (("--runtime", "trt-fp16"), "has no fp16 TensorRT engine"),
    (("--device", "tpu"), "unknown device 'tpu'"),
])
def test_bad_options_are_one_line_exit_2(bundle: Path, args: tuple[str, ...], message: str) -> None:
    res = _run(str(bundle), *args)
    assert res.exit_code == 2 and message in _one_error_line(res)


def test_bad_paths_are_one_line_exit_2(bundle: Path, tmp_path: Path) -> None:
    for target, message in ((tmp_path / "nope", "bundle directory not found"),
                            (bundle / "model.onnx", "is a file; give the bundle folder")):
        res = _run(str(target))
        assert res.exit_code == 2 and message in _one_error_line(res)
    res = _run(str(bundle), "--json", str(tmp_path))
    assert res.exit_code == 2 and "is a folder" in _one_error_line(res)


def test_the_torch_row_needs_the_source_checkpoint(bundle: Path, tmp_path: Path) -> None:
    copy = _copy(bundle, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    source = Path(manifest["source"]["checkpoint"])
    manifest["source"]["checkpoint"] = str(tmp_path / "moved.safetensors")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    report = bench_bundle(copy, iters=1, warmup=0, batch_size=2)
    row = report.runtimes["torch"]
    assert not row.measured and "is not there any more" in str(row.reason) and report.runtimes["onnx-fp32"].measured
    res = _run(str(copy), *FAST, "--runtime", "torch")
    assert res.exit_code == 2 and "--checkpoint" in _one_error_line(res)
    assert bench_bundle(copy, checkpoint=source, iters=1, warmup=0, batch_size=2).runtimes["torch"].measured
    other = save_checkpoint(create_model("tiny_cnn", width=0.5), tmp_path / "other.safetensors")
    res = _run(str(copy), "--checkpoint", str(other))
    assert res.exit_code == 2 and "is not the checkpoint this bundle was exported from" in _one_error_line(res)


def test_a_tensorrt_engine_is_timed_through_the_runtime(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fake tensorrt runs the engine on the CPU (its logits are a fixed function of the input): every timed
    call goes through ``set_input_shape`` and ``execute_async_v3``; a batch above the profile's max is split."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(tensorrt_build, "current_gpu",
                        lambda device_index=None: {"gpu": "NVIDIA Fake GPU", "compute_capability": "8.9"})
    copy = _copy(bundle, tmp_path)
    fake = make_fake_tensorrt("10.9.0.34")
    info = tensorrt_build.build_bundle_engine(copy, precision="int8", trt=fake, image_size=32, min_batch=1,
                                              opt_batch=4, max_batch=4)
    fake.state.calls.clear()
    report = bench_bundle(copy, iters=3, warmup=1, batch_size=8, runtimes=["trt-int8"],
                          runtime_options={"tensorrt": {"trt": fake, "device": "cpu"}})
    row = report.runtimes["trt-int8"]
    assert list(report.runtimes) == ["onnx-fp32", "trt-int8"] and row.measured
    assert row.file == info["file"] and row.sha256 == read_manifest(copy)["files"][info["file"]]["sha256"]
    assert row.details["tensorrt"] == "10.9.0.34" and row.details["batch_size"] == 4
    assert row.latency_ms["p50"] > 0 and row.throughput["median"] > 0 and row.vs_baseline["latency_speedup"] > 0
    # per warm-up round: 1 + 2 executions (batch 8 = two of 4); per timed round one more batch-1 call (re-warm)
    assert len(fake.state.named("execute_async_v3")) == 1 * 3 + 3 * 4
    shapes = {c[2] for c in fake.state.named("set_input_shape")}
    assert shapes == {(1, 3, 32, 32), (4, 3, 32, 32)}


def test_measure_interleaves_and_summarises() -> None:
    order: list[str] = []
    ticks = iter(range(10_000))
    calls = {n: (lambda n=n: order.append(n + "1"), lambda n=n: order.append(n + "b")) for n in "ab"}
    timings, rounds = measure(calls, batch_size=10, warmup=1, iters=2, clock=lambda: float(next(ticks)))
    assert rounds == 2
    assert order == ["a1", "ab", "b1", "bb",  # warm-up
                     "a1", "a1", "ab", "b1", "b1", "bb",  # round 1: a first (each turn re-warms with a batch-1 call)
                     "b1", "b1", "bb", "a1", "a1", "ab"]  # round 2: b first
    assert timings["a"].latency_ms == [1000.0, 1000.0] and timings["a"].throughput == [10.0, 10.0]
    assert (percentile([4, 1, 3, 2], 0.5) == 2.5
            and percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.9) == pytest.approx(9.1))
    assert bench_module.summarize(Timing([1.0, 3.0], [5.0, 7.0]))[0]["mean"] == 2.0
