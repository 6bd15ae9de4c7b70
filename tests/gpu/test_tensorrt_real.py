"""The TensorRT backend on real TensorRT: build engines from a tiny exported ResNet-18 and run them.

Marked ``tensorrt`` and ``cuda``: skipped (tests/conftest.py) wherever ``import tensorrt`` fails or there is
no GPU, which is every machine of this project (TensorRT comes only from NVIDIA's index). Run it in NVIDIA's
PyTorch/TensorRT container: ``pytest tests/gpu/test_tensorrt_real.py``. It checks what the fake in
``tests/unit/fake_tensorrt.py`` cannot: that the real bindings take the arguments rkd passes, that the
strongly typed fp32 engine matches torch (top-1 agreement >= 99% on 64 random images, max |logit diff| <
1e-2), that fp16 (converted ONNX) and int8 (QDQ ONNX, explicit quantization) engines build and agree, and that
the manifest round trip and timing cache work.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rkd.deploy.bundle import read_manifest, stage_bundle, write_manifest
from rkd.deploy.runtimes import open_runtime
from rkd.deploy.tensorrt_build import build_bundle_engine, build_engine, current_gpu
from rkd.deploy.tensorrt_runtime import TensorRTRuntime
from rkd.models import create_model

pytestmark = [pytest.mark.tensorrt, pytest.mark.cuda]

N_IMAGES = 64


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """A ResNet-18 (width 0.125, random weights, CPU, eval) and its ONNX file (dynamic batch)."""
    torch.manual_seed(0)
    model = create_model("resnet18", width=0.125).eval()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation warning
        torch.onnx.export(
            model,
            (torch.rand(2, 3, 32, 32),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
        )
    return model, path


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(N_IMAGES, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _reference(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)  # fp32 on the CPU: no TF32


def _runtime(engine: Path, info: dict[str, Any], **kw: Any) -> TensorRTRuntime:
    return TensorRTRuntime(engine, {"engines": {engine.name: info}}, **kw)


def test_fp32_engine_matches_torch(exported: tuple, images: torch.Tensor, tmp_path: Path) -> None:
    import tensorrt as trt

    model, onnx_path = exported
    engine = tmp_path / "model.fp32.engine"
    cache = tmp_path / "timing.cache"
    info = build_engine(onnx_path, engine, precision="fp32", opt_batch=32, max_batch=64, timing_cache=cache)
    assert engine.is_file() and cache.is_file() and info["tensorrt"] == trt.__version__
    assert info["compute_capability"] == current_gpu()["compute_capability"]
    assert info["profile"] == {"min": [1, 3, 32, 32], "opt": [32, 3, 32, 32], "max": [64, 3, 32, 32]}
    runtime = _runtime(engine, info)
    logits = runtime.predict(images.cuda())
    assert logits.is_cuda and logits.shape == (N_IMAGES, 10) and logits.dtype == torch.float32
    ref = _reference(model, images)
    got = logits.cpu()
    agreement = (got.argmax(1) == ref.argmax(1)).float().mean().item()
    assert agreement >= 0.99, agreement
    assert (got - ref).abs().max().item() < 1e-2
    # CPU input comes back on the CPU; batches above the profile's max are split
    more = torch.cat([images, images[:7]])
    torch.testing.assert_close(runtime.predict(more), torch.cat([got, got[:7]]), atol=1e-5, rtol=1e-5)
    desc = runtime.describe()
    assert desc["runtime"] == "tensorrt" and desc["tensorrt"] == trt.__version__ and desc["batch_size"] == 64
    again = build_engine(
        onnx_path, tmp_path / "again.engine", precision="fp32", max_batch=64, timing_cache=cache
    )
    assert again["timing_cache_reused"] is True


def test_fp16_engine_from_converted_onnx(exported: tuple, images: torch.Tensor, tmp_path: Path) -> None:
    model, onnx_path = exported
    engine = tmp_path / "model.fp16.engine"
    info = build_engine(onnx_path, engine, precision="fp16", max_batch=64)
    logits = _runtime(engine, info).predict(images.cuda()).cpu()
    ref = _reference(model, images)
    assert torch.isfinite(logits).all()
    assert (logits.argmax(1) == ref.argmax(1)).float().mean().item() >= 0.9
    assert (logits - ref).abs().max().item() < 5e-2


def test_int8_engine_from_qdq_onnx_agrees_with_onnxruntime(
    exported: tuple, images: torch.Tensor, tmp_path: Path
) -> None:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    _, onnx_path = exported
    qdq = tmp_path / "model.int8.onnx"
    calib = [
        {"input": torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(i)).numpy()}
        for i in range(4)
    ]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calib)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantize_static(  # the `trt` scheme: signed INT8, symmetric activations and weights, per-channel weights
        str(onnx_path),
        str(qdq),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    engine = tmp_path / "model.int8.engine"
    info = build_engine(qdq, engine, precision="int8", max_batch=64)
    logits = _runtime(engine, info).predict(images.cuda()).cpu().numpy()
    session = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input": images.numpy()})[0]
    assert np.isfinite(logits).all()
    assert (logits.argmax(1) == expected.argmax(1)).mean() >= 0.9


def test_bundle_engine_round_trip(exported: tuple, images: torch.Tensor, tmp_path: Path) -> None:
    model, onnx_path = exported
    bundle = tmp_path / "bundle"
    with stage_bundle(bundle, force=False) as stage:
        (stage / "model.onnx").write_bytes(onnx_path.read_bytes())
        write_manifest(stage, {"model": {"name": "resnet18", "width": 0.125}})
    info = build_bundle_engine(bundle, precision="fp32", max_batch=64)
    manifest = read_manifest(bundle, verify=True)
    assert manifest["engines"][info["file"]] == info
    runtime = open_runtime(
        bundle / info["file"]
    )  # reads the manifest beside the engine, checks version and SM
    assert isinstance(runtime, TensorRTRuntime)
    ref = _reference(model, images)
    agreement = (runtime.predict(images).argmax(1) == ref.argmax(1)).float().mean().item()
    assert agreement >= 0.99
