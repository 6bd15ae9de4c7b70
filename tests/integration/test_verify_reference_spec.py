"""``--reference FILE --reference-model timm:NAME`` (or ``torchvision:NAME``): the float reference of a model rkd
did not make, built from its library without download and loaded strictly from a plain state_dict."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rkd.cli.app import app
from rkd.errors import CheckpointError, MissingDependencyError, UsageError
from rkd.models.library import ModelSpec, load_library_model, parse_model_spec
from rkd.testing import export_onnx, synthetic_images

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def timm_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A timm resnet18 (random weights, 10 classes, BatchNorm statistics from a few passes) as a state_dict
    file and as ONNX at 32 px."""
    root = tmp_path_factory.mktemp("timm")
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=10)
    net.train()
    with torch.no_grad():
        net(synthetic_images(32, 32)[0])
    net.eval()
    state = root / "resnet18.pt"
    torch.save(net.state_dict(), state)
    return state, export_onnx(net, root / "resnet18.onnx", image_size=32)


def _ort(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def test_the_timm_reference_is_the_exported_model(timm_files: tuple[Path, Path]) -> None:
    state, onnx_path = timm_files
    ref = load_library_model(state, parse_model_spec("timm:resnet18"), 10)
    x = synthetic_images(8, 32)[0]
    with torch.no_grad():
        out = ref(x)
    torch.testing.assert_close(out, _ort(onnx_path, x), atol=1e-4, rtol=1e-4)


def test_rkd_verify_takes_a_timm_spec_as_reference(timm_files: tuple[Path, Path], tmp_path: Path) -> None:
    state, onnx_path = timm_files
    res = CliRunner().invoke(app, ["verify", "--engine", str(onnx_path), "--reference", str(state),
                                   "--reference-model", "timm:resnet18", "--data", "synthetic", "--n", "8",
                                   "--attacks", "pgd2", "--no-gates", "--report", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "rep" / "verify.json").read_text())
    assert rep["reference"]["kind"] == "state_dict (timm:resnet18)"
    # the reference is the engine's own float model: the same clean accuracy
    assert rep["float"]["clean_acc"] == rep["clean_acc"]


def test_a_state_dict_that_does_not_fit_names_the_keys(timm_files: tuple[Path, Path], tmp_path: Path) -> None:
    state = torch.load(timm_files[0], weights_only=True)
    state["extra.weight"] = torch.zeros(1)
    del state["fc.bias"]
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError) as info:
        load_library_model(bad, ModelSpec("timm", "resnet18", None), 10)
    msg = str(info.value)
    assert "\n" not in msg and "missing key(s): fc.bias" in msg and "unexpected key(s): extra.weight" in msg
    res = CliRunner().invoke(app, ["verify", "--engine", str(timm_files[1]), "--reference", str(bad),
                                   "--reference-model", "timm:resnet18", "--data", "synthetic", "--n", "4",
                                   "--attacks", "pgd2", "--no-gates", "--report", str(tmp_path / "rep")])
    assert res.exit_code == 2 and "fc.bias" in res.output


def test_without_timm_the_error_says_how_to_install_it(timm_files: tuple[Path, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(MissingDependencyError, match="pip install timm") as info:
        load_library_model(timm_files[0], ModelSpec("timm", "resnet18", None), 10)
    assert info.value.exit_code == 3


def test_a_torchvision_spec_builds_without_download(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2(num_classes=4).eval()
    path = tmp_path / "mnv2.pt"
    torch.save(net.state_dict(), path)
    ref = load_library_model(path, parse_model_spec("torchvision:mobilenet_v2:4"), 4)
    x = synthetic_images(2, 32)[0]
    with torch.no_grad():
        torch.testing.assert_close(ref(x), net(x))


@pytest.mark.parametrize(("spec", "parsed"), [
    ("timm:resnet18", ModelSpec("timm", "resnet18", None)),
    ("torchvision:mobilenet_v2:10", ModelSpec("torchvision", "mobilenet_v2", 10)),
    ("tv_resnet18:1000", ModelSpec(None, "tv_resnet18", 1000)),
    ("resnet18", ModelSpec(None, "resnet18", None)),
])
def test_specs_parse(spec: str, parsed: ModelSpec) -> None:
    assert parse_model_spec(spec) == parsed


@pytest.mark.parametrize("spec", ["timm:", "timm:resnet18:x", "resnet18:0", "timm:resnet18:3:4"])
def test_bad_specs_are_one_line_usage_errors(spec: str) -> None:
    with pytest.raises(UsageError, match="timm:NAME"):
        parse_model_spec(spec)
