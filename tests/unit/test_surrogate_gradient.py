"""The surrogate's gradient pass (what every engine attack step runs): the integer kernels' forward values with
the float graph's gradient, computed without running the float convolutions forward, and the straight-through
fake quantization without torch's fake-quantize kernel; the gradient is the one the plain formulation
``float_op + (integer_value - float_op).detach()`` gives."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rkd.quantize.surrogate as surrogate_module
from rkd.data import load_dataset
from rkd.quantize.onnx_ops import _conv_core
from rkd.quantize.ort_static import quantize_onnx
from rkd.quantize.qdq_integer import exact_fake_quant
from rkd.quantize.surrogate import OnnxGraphModule, build_surrogate


class _Residual(nn.Module):
    """conv -> relu -> [conv -> relu -> conv] + skip -> relu -> pool -> linear: integer Conv and Add groups."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.b(torch.relu(self.a(x))))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


@pytest.fixture(scope="module")
def surrogate(tmp_path_factory: pytest.TempPathFactory) -> OnnxGraphModule:
    tmp = tmp_path_factory.mktemp("grad")
    path = tmp / "res.onnx"
    torch.onnx.export(_Residual().eval(), (torch.rand(2, 3, 16, 16),), str(path), input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamo=False,
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    calib = load_dataset("synthetic", "train", n=64).to_float(torch.arange(64))
    calib = nn.functional.interpolate(calib, size=16).numpy()
    quantize_onnx(path, tmp / "res.int8.onnx", calib, scheme="cpu")
    module = build_surrogate(tmp / "res.int8.onnx")
    assert module.num_integer_ops >= 3  # the pattern under test: integer Conv groups (and the residual Add)
    return module


def _grad(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    out = module(x)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(out, y, reduction="sum"), x)
    return out.detach(), g


def _plain_fake_quant(x, scale, zp, qmin, qmax, axis):  # the formulation the fast one replaces
    with torch.no_grad():
        exact = exact_fake_quant(x.detach(), scale, zp, qmin, qmax, axis)
    if axis is None:
        fq = torch.fake_quantize_per_tensor_affine(x, scale[0], zp[0], qmin, qmax)
    else:
        fq = torch.fake_quantize_per_channel_affine(x, scale, zp, axis, qmin, qmax)
    return fq + (exact - fq).detach()


def test_gradient_pass_equals_the_plain_formulation(surrogate: OnnxGraphModule,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    x, y = torch.rand(32, 3, 16, 16), torch.randint(0, 10, (32,))
    out_fast, g_fast = _grad(surrogate, x, y)
    assert g_fast.abs().sum() > 0

    def plain_conv(x, w, b, attrs, value):
        conv = _conv_core(x, w, b, attrs)
        return conv + (value - conv).detach()

    monkeypatch.setattr(surrogate_module, "integer_conv", plain_conv)
    monkeypatch.setattr(surrogate_module, "integer_add", lambda a, b, value: None)
    monkeypatch.setattr(surrogate_module, "exact_fake_quant", _plain_fake_quant)
    out_plain, g_plain = _grad(surrogate, x, y)
    assert torch.equal(out_fast, out_plain)  # forward values: ONNX Runtime's, unchanged
    torch.testing.assert_close(g_fast, g_plain, rtol=1e-5, atol=1e-9)


def test_gradient_pass_runs_each_integer_convolution_forward_once(surrogate: OnnxGraphModule,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    conv2d = nn.functional.conv2d
    monkeypatch.setattr(nn.functional, "conv2d", lambda *a, **k: calls.append(1) or conv2d(*a, **k))
    x, y = torch.rand(4, 3, 16, 16), torch.randint(0, 10, (4,))
    with torch.no_grad():
        surrogate(x)
    forward_only = len(calls)
    calls.clear()
    _grad(surrogate, x, y)
    assert forward_only >= 3 and len(calls) == forward_only  # the float forward is not run beside the integer one


def test_fake_quant_gradient_is_straight_through_and_zero_where_saturated() -> None:
    scale, zp = torch.tensor([0.05]), torch.tensor([0], dtype=torch.int32)
    x = torch.tensor([-20.0, -6.5, -1.0, 0.013, 2.5, 6.33, 6.4, 30.0], requires_grad=True)
    out = exact_fake_quant(x, scale, zp, -128, 127, None)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert g.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]  # [-128, 127] * 0.05 = [-6.4, 6.35]
    assert out.detach().tolist() == pytest.approx([-6.4, -6.4, -1.0, 0.0, 2.5, 6.35, 6.35, 6.35])
    fq = torch.fake_quantize_per_tensor_affine(x, 0.05, 0, -128, 127)
    (g_torch,) = torch.autograd.grad(fq.sum(), x)
    assert torch.equal(g, g_torch)


def test_fake_quant_without_gradient_returns_a_plain_tensor() -> None:
    x = torch.rand(3, 4, requires_grad=True)
    with torch.no_grad():
        out = exact_fake_quant(x, torch.tensor([0.1]), torch.tensor([0]), 0, 255, None)
    assert out.grad_fn is None and not out.requires_grad
