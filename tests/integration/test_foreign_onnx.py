"""ONNX models rkd never built run in the gradient interpreter and agree with ONNX Runtime.

torchvision's MobileNetV2 and ResNet-18 (random weights, BatchNorm statistics from generated images, the classifier
refitted on the ``synthetic`` data set so that decisions spread over the classes), exported by torch's TorchScript
(legacy) and dynamo exporters, quantized by ONNX Runtime's own ``quantize_static`` in QDQ and QOperator formats,
per-tensor and per-channel, uint8 and int8 activations. Agreement is top-1 of the interpreter against ONNX Runtime
on 200 ``synthetic`` test images at 32 px; one case at 224 px on 16 images (cost).

Random-weight MobileNetV2 is noise-dominated once quantized (its INT8 top-1 agrees with its own float top-1 on about
a third of the images), so one-LSB rounding differences cascade: the QDQ form agrees only because the interpreter
computes the groups ONNX Runtime fuses (DequantizeLinear -> Conv -> QuantizeLinear, QDQ Add, ...) as its integer
kernels do; convolving the dequantized floats instead agreed on 76-97%.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from rkd.errors import CheckpointError, UnsupportedOperatorError
from rkd.quantize.onnx_ops import lookup, supported_ops
from rkd.quantize.surrogate import onnx_module
from rkd.testing import export_onnx, ort_quantize, synthetic_images, torchvision_classifier

N = 200
ARCHS = ("mobilenet_v2", "resnet18")
EXPORTERS = ("legacy", "dynamo")


def _needs(exporter: str) -> None:
    if exporter == "dynamo":
        pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return synthetic_images(N, 32)[0]


@pytest.fixture(scope="module")
def calibration() -> torch.Tensor:
    return synthetic_images(32, 32, split="train")[0]


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {arch: torchvision_classifier(arch, seed=0) for arch in ARCHS}


@pytest.fixture(scope="module")
def exported(models: dict[str, nn.Module], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    out: dict[tuple[str, str], Path] = {}

    class Lazy(dict):  # export on first use, once per module
        def __missing__(self, key: tuple[str, str]) -> Path:
            arch, exporter = key
            path = tmp_path_factory.mktemp("foreign") / f"{arch}.{exporter}.onnx"
            self[key] = export_onnx(models[arch], path, exporter=exporter)
            return self[key]

    return Lazy(out)


def _ort(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def _top1(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(1) == b.argmax(1)).float().mean())


def _input_grad(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, logits.detach().argmax(1))
    (grad,) = torch.autograd.grad(loss, x)
    return grad


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("arch", ARCHS)
def test_float_graphs_match_onnx_runtime_and_the_torch_gradient(arch: str, exporter: str, models: dict,
                                                                 exported: dict, images: torch.Tensor) -> None:
    _needs(exporter)
    path = exported[arch, exporter]
    module = onnx_module(path)
    with torch.no_grad():
        out = module(images)
    assert _top1(out, _ort(path, images)) >= 0.99
    assert len(set(out.argmax(1).tolist())) >= 5  # decisions spread over the classes
    g_onnx, g_torch = _input_grad(module, images[:16]), _input_grad(models[arch], images[:16])
    cos = nn.functional.cosine_similarity(g_onnx.flatten(1), g_torch.flatten(1))
    assert float(cos.min()) >= 0.99, cos


# (arch, exporter, format, per_channel, activations, top-1 floor): each format x granularity x activation type
# once per architecture and exporter
INT8_CASES = [
    ("mobilenet_v2", "legacy", "qdq", False, "uint8", 0.99),
    ("mobilenet_v2", "legacy", "qoperator", True, "int8", 0.99),
    ("mobilenet_v2", "dynamo", "qoperator", False, "uint8", 0.99),
    ("mobilenet_v2", "dynamo", "qdq", True, "int8", 0.99),
    ("resnet18", "legacy", "qoperator", False, "int8", 0.99),
    ("resnet18", "legacy", "qdq", True, "uint8", 0.99),
    ("resnet18", "dynamo", "qdq", False, "int8", 0.99),
    ("resnet18", "dynamo", "qoperator", True, "uint8", 0.99),
]


@pytest.mark.parametrize(("arch", "exporter", "fmt", "per_channel", "act", "floor"), INT8_CASES,
                         ids=["-".join(map(str, c[:5])).replace("True", "pc").replace("False", "pt")
                              for c in INT8_CASES])
def test_onnx_runtime_int8_models_agree_and_give_gradients(arch: str, exporter: str, fmt: str, per_channel: bool,
                                                           act: str, floor: float, exported: dict, images: torch.Tensor,
                                                           calibration: torch.Tensor, tmp_path: Path) -> None:
    _needs(exporter)
    q = ort_quantize(exported[arch, exporter], tmp_path / "int8.onnx", calibration, quant_format=fmt,
                     per_channel=per_channel, activations=act)
    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    if fmt == "qoperator":
        assert "QLinearConv" in ops and "Conv" not in ops, ops
    else:
        assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops, ops
    module = onnx_module(q)
    if fmt == "qdq":
        assert module.num_fake_quant > 0
    with torch.no_grad():
        out = module(images)
    ref = _ort(q, images)
    assert _top1(out, ref) >= floor
    grad = _input_grad(module, images[:8])
    assert torch.isfinite(grad).all() and (grad.flatten(1).abs().sum(1) > 0).all()


@pytest.mark.parametrize(("arch", "fmt", "per_channel", "act"), [
    ("resnet18", "qoperator", True, "uint8"),
    ("mobilenet_v2", "qdq", False, "uint8"),
    ("mobilenet_v2", "qoperator", True, "int8"),
])
def test_224_pixel_models_agree(arch: str, fmt: str, per_channel: bool, act: str, tmp_path: Path) -> None:
    """224 px cases on 12 images (cost); benchmarks/foreign_onnx.py measures more."""
    model = torchvision_classifier(arch, seed=0, image_size=224) if arch == "mobilenet_v2" else \
        torchvision_classifier(arch, seed=0)
    path = export_onnx(model, tmp_path / f"{arch}-224.onnx", exporter="legacy", image_size=224)
    x = synthetic_images(12, 224)[0]
    q = ort_quantize(path, tmp_path / f"{arch}-224.int8.onnx", synthetic_images(8, 224, split="train")[0],
                     quant_format=fmt, per_channel=per_channel, activations=act)
    module = onnx_module(q)
    if fmt == "qdq":
        assert module.num_integer_ops > 0
    with torch.no_grad():
        out = module(x)
    assert _top1(out, _ort(q, x)) == 1.0


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.conv(x) + 0.0, 1))


def test_integer_kernels_change_the_forward_value_not_the_gradient(tmp_path: Path) -> None:
    """A QDQ Conv and Gemm run as ONNX Runtime's integer kernels forward; backward is the float graph's."""
    path = export_onnx(_ConvNet().eval(), tmp_path / "c.onnx", exporter="legacy", image_size=16)
    q = ort_quantize(path, tmp_path / "c.qdq.onnx", synthetic_images(16, 16, split="train")[0],
                     quant_format="qdq", per_channel=True, activations="uint8")
    x = synthetic_images(32, 16)[0]
    module = onnx_module(q)
    assert module.num_integer_ops == 2
    w = torch.randn(len(x), 10, generator=torch.Generator().manual_seed(0))

    def grad(m: nn.Module) -> torch.Tensor:
        xx = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((m(xx) * w).sum(), xx)
        return g

    g_int = grad(module)
    with torch.no_grad():
        out_int = module(x)
    for step in module.steps:
        step.pop("integer", None)
    assert _top1(out_int, _ort(q, x)) == 1.0 and float((out_int - _ort(q, x)).abs().max()) < 1e-4
    torch.testing.assert_close(grad(module), g_int)


class _ContribNet(nn.Module):
    """Ops that ONNX Runtime's QOperator quantizer turns into com.microsoft contrib ops."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.w = nn.Parameter(torch.randn(16, 10) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = nn.functional.leaky_relu(self.a(x), 0.1)
        b = torch.sigmoid(self.b(x))
        y = nn.functional.avg_pool2d(torch.cat([a, a * b], dim=1), 2)
        y = y.mean(dim=(2, 3))  # GlobalAveragePool / ReduceMean
        return torch.softmax(torch.matmul(y, self.w), dim=1)


def test_qoperator_contrib_ops_agree(tmp_path: Path) -> None:
    path = export_onnx(_ContribNet().eval(), tmp_path / "c.onnx", exporter="legacy", image_size=16)
    x = synthetic_images(64, 16)[0]
    q = ort_quantize(path, tmp_path / "c.int8.onnx", synthetic_images(16, 16, split="train")[0],
                     quant_format="qoperator", per_channel=False, activations="uint8")
    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert {"QLinearLeakyRelu", "QLinearSigmoid", "QLinearMul", "QLinearConcat", "QLinearAveragePool",
            "QLinearMatMul"} <= ops, ops
    module = onnx_module(q)
    with torch.no_grad():
        out = module(x)
    ref = _ort(q, x)
    assert _top1(out, ref) == 1.0 and float((out - ref).abs().max()) < 1e-5
    assert _input_grad(module, x[:4]).abs().sum() > 0


def test_dynamic_quantization_ops_agree(tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = export_onnx(_ContribNet().eval(), tmp_path / "c.onnx", exporter="legacy", image_size=16)
    q = tmp_path / "c.dyn.onnx"
    quantize_dynamic(str(path), str(q), weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv", "MatMul"])
    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"} <= ops, ops
    x = synthetic_images(32, 16)[0]
    with torch.no_grad():
        out = onnx_module(q)(x)
    assert _top1(out, _ort(q, x)) >= 0.99


def _graph_with(nodes: list, path: Path, extra_opsets: dict[str, int] | None = None) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    k = numpy_helper.from_array(np.array([3], dtype=np.int64), "k")
    graph = helper.make_graph(nodes, "g", [x], [y], [k])
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def test_unsupported_operators_are_named_in_one_line(tmp_path: Path) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("TopK", ["r", "k"], ["v", "i"], name="topk_1"),
             helper.make_node("TopK", ["v", "k"], ["v2", "i2"], name="topk_2"),
             helper.make_node("Mystery", ["v2"], ["y"], name="custom_0", domain="com.example")]
    path = _graph_with(nodes, tmp_path / "odd.onnx", {"com.example": 1})
    with pytest.raises(UnsupportedOperatorError) as info:
        onnx_module(path)
    err = info.value
    assert isinstance(err, CheckpointError) and err.exit_code == 2
    assert err.ops == ["Mystery", "TopK"] and err.counts == {"Mystery": 1, "TopK": 2}
    assert err.first_nodes == {"Mystery": "custom_0", "TopK": "topk_1"}
    msg = str(err)
    assert "\n" not in msg
    assert msg.startswith("odd.onnx uses operators the gradient interpreter does not support: ")
    assert 'TopK (2, first at node "topk_1")' in msg
    assert 'Mystery (domain com.example, 1, first at node "custom_0")' in msg
    assert "--surrogate" in msg and "black-box" in msg


def test_the_registry_lists_what_the_interpreter_runs() -> None:
    ops = supported_ops()
    assert ops == sorted(ops, key=lambda o: (o.domain, o.op))
    names = {(o.domain, o.op) for o in ops}
    assert {("ai.onnx", "QLinearConv"), ("ai.onnx", "QLinearMatMul"), ("com.microsoft", "QGemm"),
            ("com.microsoft", "QLinearAdd"), ("com.microsoft", "QLinearGlobalAveragePool"),
            ("ai.onnx", "Reshape"), ("ai.onnx", "ReduceMean")} <= names
    assert all(lookup(o.op, o.domain) is not None and o.gradient for o in ops)
    assert lookup("QLinearConv", "") is lookup("QLinearConv", "ai.onnx")
    assert lookup("TopK", "") is None and lookup("QGemm", "") is None
