"""ONNX of the common ``x.view(x.size(0), -1)`` flatten (Shape -> Gather with a scalar index -> Unsqueeze ->
Concat -> Reshape) runs in the torch interpreter, float and INT8 (QDQ), and ``rkd verify`` attacks it."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from rkd.data import load_dataset
from rkd.deploy.runtimes import OnnxRuntime
from rkd.quantize.ort_static import quantize_onnx
from rkd.quantize.surrogate import build_surrogate, onnx_module


class _ViewNet(nn.Module):
    """conv -> relu -> pool -> ``x.view(x.size(0), -1)`` -> linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.avg_pool2d(torch.relu(self.conv(x)), 4)
        x = x.view(x.size(0), -1)
        return self.fc(x)


def _export(path: Path, dynamo: bool) -> Path:
    kw = ({"dynamic_shapes": {"x": {0: torch.export.Dim("batch", min=1, max=1024)}}} if dynamo else
          {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}})
    torch.onnx.export(_ViewNet().eval(), (torch.rand(2, 3, 32, 32),), str(path), input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamo=dynamo, **kw)
    return path


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_a_view_flatten_runs_in_the_interpreter_float_and_int8(dynamo: bool, tmp_path: Path) -> None:
    if dynamo:
        pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    path = _export(tmp_path / "view.onnx", dynamo)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    x = torch.rand(5, 3, 32, 32)
    if not dynamo:
        assert "Gather" in ops and "Shape" in ops  # the pattern under test
    module = onnx_module(path)
    expected = _ViewNet().eval()(x)
    assert torch.allclose(module(x), expected, atol=1e-5)
    assert torch.allclose(OnnxRuntime(path).predict(x), expected, atol=1e-4)

    calib = load_dataset("synthetic", "train", n=64).to_float(torch.arange(64)).numpy()
    q = tmp_path / "view.int8.onnx"
    quantize_onnx(path, q, calib, scheme="cpu")
    surrogate = build_surrogate(q)
    x.requires_grad_(True)
    out = surrogate(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert grad.abs().sum() > 0
    engine = OnnxRuntime(q).predict(x.detach())
    assert (out.detach().argmax(1) == engine.argmax(1)).float().mean() >= 0.8
    assert (out.detach() - engine).abs().max() < 0.5


def test_rkd_verify_attacks_a_view_flatten_model(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rkd.cli.app import app

    path = _export(tmp_path / "view.onnx", False)
    res = CliRunner().invoke(app, ["verify", "--engine", str(path), "--data", "synthetic:n=32", "--n", "16",
                                   "--attacks", "fgsm,pgd3", "--gate", "agreement.clean>=0.99", "--allow-no-floor",
                                   "--report", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "r" / "verify.json").read_text())
    assert rep["surrogate"]["kind"].startswith("onnx-interpreter")
    assert rep["agreement"]["clean"]["top1_agreement"] == 1.0
