"""ONNX export end to end on CPU: every architecture, the bundle, the runtimes, and `rkd export`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
import typer
from typer.testing import CliRunner

from rkd.cli.export import export
from rkd.deploy.bundle import read_manifest
from rkd.deploy.export import export_bundle
from rkd.deploy.onnx_export import compare_onnx, export_onnx
from rkd.deploy.runtimes import RUNTIMES, OnnxRuntime, TorchRuntime, open_runtime
from rkd.errors import MissingDependencyError, UsageError
from rkd.models import create_model, list_models, save_checkpoint
from rkd.testing import TINY_CONFIGS

# The smallest configuration of each registered model.
TINY: dict[str, dict[str, Any]] = TINY_CONFIGS

app = typer.Typer()
app.command("export")(export)


@app.callback()
def _root() -> None:
    """A group (not a single-command app), so args start with the command name as with `rkd`."""
runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, width=0.125)
    path = tmp_path_factory.mktemp("ckpt") / "student.safetensors"
    meta = {"data": {"dataset": "cifar10", "classes": [f"c{k}" for k in range(10)]},
            "threat": {"norm": "linf", "eps": 8 / 255, "alpha": 2 / 255}}
    return save_checkpoint(model, path, metadata=meta)


@pytest.mark.parametrize("name", list_models())
def test_every_model_exports_checks_and_matches_torch(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, **TINY[name]).eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # one file, no external data, no temp
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) == 17
    for batch in (1, 5):  # dynamic batch
        parity = compare_onnx(model, path, torch.rand(batch, 3, 32, 32))
        assert parity["n"] == batch and parity["max_abs_diff"] < 1e-4 and parity["top1_agreement"] == 1.0


def test_export_keeps_train_mode_and_rejects_bad_opset(tmp_path: Path) -> None:
    model = create_model("tiny_cnn", width=0.5).train()
    export_onnx(model, tmp_path / "m.onnx")
    assert model.training
    for bad in (13, 99):
        with pytest.raises(UsageError, match="opset"):
            export_onnx(model, tmp_path / "bad.onnx", opset=bad)
    assert not (tmp_path / "bad.onnx").exists()


def test_checker_failure_is_a_one_line_usage_error_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def reject(*args: Any, **kwargs: Any) -> None:
        raise onnx.checker.ValidationError("Field 'type' of 'value_info' is required but missing.\nmore")

    monkeypatch.setattr(onnx.checker, "check_model", reject)
    with pytest.raises(UsageError, match="ONNX checker rejected '.*m.onnx': Field 'type'") as info:
        export_onnx(create_model("tiny_cnn", width=0.5), tmp_path / "m.onnx")
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_export_bundle_writes_onnx_and_manifest(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    manifest = export_bundle(checkpoint, out, parity_data=("synthetic", {}), parity_n=32)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]
    assert json.loads((out / "manifest.json").read_text()) == manifest == read_manifest(out)
    assert manifest["format"] == "rkd-bundle" and manifest["format_version"] == 1
    assert manifest["model"]["name"] == "resnet18" and manifest["model"]["width"] == 0.125
    assert manifest["input"] == {"name": "input", "shape": [None, 3, 32, 32], "dtype": "float32",
                                 "range": [0.0, 1.0], "layout": "NCHW", "normalisation": "inside the model"}
    assert manifest["output"]["name"] == "logits" and manifest["output"]["num_classes"] == 10
    assert manifest["classes"] == [f"c{k}" for k in range(10)] and manifest["classes_source"] == "checkpoint"
    assert manifest["threat_model"] == {"norm": "linf", "eps": pytest.approx(8 / 255)}
    assert manifest["source"]["sha256"] == json.loads(checkpoint.with_suffix(".json").read_text())["sha256"]
    assert set(manifest["files"]) == {"model.onnx"} and manifest["files"]["model.onnx"]["bytes"] > 0
    assert manifest["versions"]["onnx"] and manifest["versions"]["torch"]
    assert manifest["created"].endswith("+00:00")
    section = manifest["export"]
    assert section["opset"] == 17 and section["exporter"] == "torch.onnx legacy"
    assert section["parity_data"]["synthetic"] is True and section["parity_data"]["n"] == 32
    assert section["parity"]["max_abs_diff"] < 1e-4 and section["parity"]["top1_agreement"] == 1.0


def test_runtimes_agree_on_onnx_and_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    export_bundle(checkpoint, tmp_path / "b", parity_data=None)
    x = torch.rand(16, 3, 32, 32)
    ort_rt, torch_rt = open_runtime(tmp_path / "b" / "model.onnx", batch_size=5), open_runtime(checkpoint)
    assert isinstance(ort_rt, OnnxRuntime) and isinstance(torch_rt, TorchRuntime)
    a, b = ort_rt.predict(x), torch_rt.predict(x)
    assert a.shape == (16, 10) and a.dtype == torch.float32
    assert torch.equal(a.argmax(1), b.argmax(1))
    assert ort_rt.predict(x[:0]).shape == (0, 10)
    info = ort_rt.describe()
    assert info["runtime"] == "onnxruntime" and info["providers"] == ["CPUExecutionProvider"]
    assert info["sha256"]
    assert torch_rt.describe()["sha256"] and RUNTIMES.names() == ["onnxruntime", "torch"]
    with pytest.raises(UsageError, match="cannot tell which runtime"):
        open_runtime(tmp_path / "model.pt")
    with pytest.raises(UsageError, match=r"\(N, 3, H, W\)"):
        ort_rt.predict(torch.rand(3, 32, 32))
    engine = tmp_path / "model.sm90.engine"
    engine.write_bytes(b"\0")
    try:
        import rkd.deploy.tensorrt_runtime  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match="needs tensorrt"):
            open_runtime(engine)


def test_cli_export_refuses_overwrite_and_force_replaces(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    args = ("export", str(checkpoint), "--parity-data", "synthetic", "--parity-n", "16", "--out", str(out))
    res = _run(*args)
    assert res.exit_code == 0, res.output
    assert "top-1 agreement" in res.output and "model.onnx" in res.output
    res = _run(*args)
    assert res.exit_code == 2 and "--force" in res.output
    res = _run(*args, "--force")
    assert res.exit_code == 0, res.output
    read_manifest(out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (out / "notes.txt").write_text("mine")  # --force replaces a bundle, never files that are not its own
    res = _run(*args, "--force")
    assert res.exit_code == 2 and "holds files that are not its bundle's" in " ".join(res.output.split())
    assert (out / "notes.txt").read_text() == "mine"
    run_dir = checkpoint.parent  # the checkpoint's own folder: not a bundle, never replaced
    res = _run("export", str(checkpoint), "--parity-data", "synthetic", "--out", str(run_dir), "--force")
    assert res.exit_code == 2 and "is not an rkd bundle" in res.output and checkpoint.is_file()


def test_cli_trt_without_tensorrt_exits_3(checkpoint: Path, tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available():
        pytest.skip("tensorrt and a GPU are present")
    res = _run("export", str(checkpoint), "--target", "trt", "--parity-data", "synthetic",
               "--out", str(tmp_path / "b"))
    assert res.exit_code == 3
    assert len(res.output.strip().splitlines()) == 1
    assert "tensorrt" in res.output.lower() or "CUDA" in res.output
    assert not (tmp_path / "b").exists()


def test_cli_trt_builds_into_the_bundle_and_reuses_it(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rkd.api
    from rkd.deploy.bundle import update_bundle

    calls: list[tuple[Path, str]] = []

    def fake_build(bundle: Path, *, precision: str) -> dict:
        calls.append((bundle, precision))
        engine = tmp_path / "fake.engine"
        engine.write_bytes(b"engine")
        update_bundle(bundle, {f"model.fake.{precision}.engine": engine}, {"engines": {"n": len(calls)}})
        return {}

    monkeypatch.setattr(rkd.api, "_engine_builder", lambda: fake_build)
    out = tmp_path / "bundle"
    base = ("export", str(checkpoint), "--target", "trt", "--parity-data", "synthetic", "--parity-n", "8",
            "--out", str(out))
    res = _run(*base)  # int8 needs model.int8.onnx, which a fresh export lacks: refused before writing
    assert res.exit_code == 2 and "model.int8.onnx" in res.output and not out.exists() and not calls
    res = _run(*base, "--precision", "fp16")
    assert res.exit_code == 0, res.output
    assert calls == [(out, "fp16")] and "model.fake.fp16.engine" in read_manifest(out)["files"]
    res = _run(*base, "--precision", "fp32")  # same checkpoint: the bundle is reused, not refused
    assert res.exit_code == 0 and "reusing" in res.output, res.output
    files = set(read_manifest(out)["files"])
    assert files == {"model.onnx", "model.fake.fp16.engine", "model.fake.fp32.engine"}


def test_cli_corrupt_checkpoint_exits_2_and_leaves_no_bundle(checkpoint: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(checkpoint.read_bytes()[:100])
    bad.with_suffix(".json").write_text(checkpoint.with_suffix(".json").read_text())
    res = _run("export", str(bad), "--parity-data", "synthetic", "--out", str(tmp_path / "b"))
    assert res.exit_code == 2 and "sha256 mismatch" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "bad.safetensors"]


def test_cli_unloadable_parity_data_exits_2_and_suggests_synthetic(checkpoint: Path, tmp_path: Path) -> None:
    res = _run("export", str(checkpoint), "--parity-data", f"npz:{tmp_path / 'none.npz'}",
               "--out", str(tmp_path / "b"))
    assert res.exit_code == 2 and "synthetic" in res.output
    assert not (tmp_path / "b").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
