"""Small models and data for tests (yours and rkd's), in the spirit of ``torchao.testing``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# The smallest useful size of every registered architecture (tests parametrise over the registry with these).
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "resnet18": {"width": 0.125},
    "preact_resnet18": {"width": 0.125},
    "mobilenet_v2": {"width": 0.25},
    "wide_resnet": {"depth": 10, "widen_factor": 1},
    "tiny_cnn": {"width": 0.5},
    "tv_mobilenet_v2": {"width": 0.25},
    "tv_resnet18": {"width": 0.125},
    "tv_resnet50": {"width": 0.0625},
    "tv_wide_resnet50_2": {"width": 0.0625},
}


def train_tiny_classifier(steps: int = 80, *, seed: int = 0) -> nn.Module:
    """``tiny_cnn`` fitted with a few Adam steps on the synthetic problem (clear decisions, not near-ties)."""
    from rkd.data import load_dataset
    from rkd.models import create_model

    torch.manual_seed(seed)
    data = load_dataset("synthetic", "train", n=512)
    model = create_model("tiny_cnn", width=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = data.to_float(), data.y
    for step in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=torch.Generator().manual_seed(seed + step))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def smooth_images(n: int, size: int = 32, *, seed: int = 0) -> torch.Tensor:
    """``n`` generated RGB images in [0, 1] (float NCHW): random 6x6 colour fields upsampled bilinearly to ``size``
    plus a little pixel noise; smooth like photographs rather than white noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 6, 6, generator=g)
    x = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0.0, 1.0)


def torchvision_classifier(arch: str, num_classes: int = 10, *, seed: int = 0, image_size: int = 32,
                           fit_head: bool = True) -> nn.Module:
    """torchvision's ``arch`` (e.g. ``mobilenet_v2``, ``resnet18``) with random weights (``torch.manual_seed(seed)``),
    BatchNorm statistics estimated on :func:`smooth_images` (train-mode passes, cumulative averages) and, with
    ``fit_head``, its classifier refitted on :func:`synthetic_images` features; in eval mode: a model built
    outside rkd whose predictions spread over the classes with margins."""
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the passes below
    model.train()
    with torch.no_grad():
        for i in range(4):
            model(smooth_images(16, image_size, seed=seed + 1000 + i))
    model.eval()
    if fit_head:
        _fit_head(model, image_size)
    return model


def synthetic_images(n: int, size: int = 32, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of rkd's ``synthetic`` data set (float NCHW in [0, 1], upsampled to ``size``) and labels."""
    from rkd.data import load_dataset

    data = load_dataset("synthetic", split, n=n)
    x = data.to_float()
    if x.shape[-1] != size:
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x, data.y


@torch.no_grad()
def _fit_head(model: nn.Module, image_size: int, n: int = 256) -> None:
    """Refit the final ``nn.Linear`` of ``model`` by ridge regression of one-hot labels of the ``synthetic`` train
    split on the penultimate features: decisions with margins, spread over the classes (seconds, no training)."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    feats: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda m, inp, out: feats.append(inp[0]))
    x, y = synthetic_images(n, image_size, split="train")
    model(x)
    hook.remove()
    f = torch.cat([feats[0], torch.ones(len(x), 1)], dim=1).double()
    target = nn.functional.one_hot(y, head.out_features).double() * 4.0 - 2.0
    sol = torch.linalg.solve(f.T @ f + 1e-2 * torch.eye(f.shape[1], dtype=f.dtype), f.T @ target)
    head.weight.copy_(sol[:-1].T.float())
    head.bias.copy_(sol[-1].float())


def export_onnx(model: nn.Module, path: Any, *, exporter: str = "legacy", image_size: int = 32,
                opset: int | None = None) -> Any:
    """``model`` exported to ONNX file ``path`` with a dynamic batch, by torch's TorchScript exporter
    (``exporter="legacy"``, ``dynamo=False``) or its dynamo exporter (``"dynamo"``, needs onnxscript). Input
    ``input``, output ``logits``."""
    x = (torch.rand(2, 3, image_size, image_size),)
    kw: dict[str, Any] = {"input_names": ["input"], "output_names": ["logits"]}
    if opset is not None:
        kw["opset_version"] = opset
    if exporter == "dynamo":
        kw["dynamic_shapes"] = {next(iter(_forward_args(model))): {0: torch.export.Dim("batch", min=1, max=4096)}}
        torch.onnx.export(model.eval(), x, str(path), dynamo=True, verbose=False, **kw)
    elif exporter == "legacy":
        kw["dynamic_axes"] = {"input": {0: "batch"}, "logits": {0: "batch"}}
        torch.onnx.export(model.eval(), x, str(path), dynamo=False, **kw)
    else:
        raise ValueError(f"exporter must be legacy or dynamo, got {exporter!r}")
    return path


def _forward_args(model: nn.Module) -> list[str]:
    import inspect

    return [p for p in inspect.signature(model.forward).parameters if p != "self"]


def ort_quantize(float_onnx: Any, out: Any, calibration: torch.Tensor, *, quant_format: str = "qdq",
                 per_channel: bool = False, activations: str = "uint8", weights: str = "int8") -> Any:
    """``float_onnx`` quantized to INT8 by ONNX Runtime's own ``quantize_static`` (after its
    ``quant_pre_process``), MinMax calibration on ``calibration`` (float NCHW): ``quant_format`` ``"qdq"``
    (QuantizeLinear/DequantizeLinear pairs) or ``"qoperator"`` (QLinearConv, QGemm, ...), per-tensor or
    per-channel weights, uint8 or int8 activations and weights. Written to ``out``; returns ``out``."""
    import tempfile
    from pathlib import Path

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    formats = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
    name = onnx.load(str(float_onnx), load_external_data=False).graph.input[0].name
    batches = [{name: calibration[i:i + 8].numpy()} for i in range(0, len(calibration), 8)]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self) -> dict[str, Any] | None:
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(float_onnx), str(pre))
        quantize_static(str(pre), str(out), _Reader(), quant_format=formats[quant_format], per_channel=per_channel,
                        activation_type=types[activations], weight_type=types[weights])
    return out
