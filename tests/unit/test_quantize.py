"""INT8 quantization on CPU: the two QDQ schemes, calibration checks, the fake-quant surrogate (agreement
with ONNX Runtime, straight-through gradients, save/load), per-layer debugging, and the engine/surrogate
wrapper."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from rkd.data import load_dataset
from rkd.deploy.onnx_export import export_onnx
from rkd.deploy.runtimes import OnnxRuntime
from rkd.errors import CheckpointError, UsageError
from rkd.models import Normalize, create_model, list_models
from rkd.quantize.calibration import ImageCalibrationReader, check_calibration_images
from rkd.quantize.ort_static import debug_layers, quantize_onnx
from rkd.quantize.surrogate import (
    OnnxGraphModule,
    agreement,
    build_surrogate,
    graph_spec,
    load_surrogate,
    save_surrogate,
)
from rkd.testing import TINY_CONFIGS, train_tiny_classifier
from rkd.verify.engine_model import EngineModel

TINY = TINY_CONFIGS


def _train_tiny(steps: int = 80):
    return train_tiny_classifier(steps)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("quant")
    model = _train_tiny()
    float_path = export_onnx(model, tmp / "model.onnx")
    calib = load_dataset("synthetic", "train", n=512).to_float(torch.arange(256)).numpy()
    test = load_dataset("synthetic", "test", n=256)
    out: dict[str, Any] = {"model": model, "float": float_path, "calib": calib, "x": test.to_float(),
                           "y": test.y, "tmp": tmp}
    for scheme in ("trt", "cpu"):
        path = tmp / f"model.{scheme}.onnx"
        out[f"settings_{scheme}"] = quantize_onnx(float_path, path, calib, scheme=scheme)
        out[scheme] = path
    return out


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


@pytest.mark.parametrize("scheme", ["trt", "cpu"])
def test_schemes_write_qdq_with_their_dtypes_and_per_channel_weights(
    trained: dict[str, Any], scheme: str
) -> None:
    proto = onnx.load(str(trained[scheme]))
    onnx.checker.check_model(proto, full_check=True)
    inits = _inits(proto)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") >= 5 and ops.count("DequantizeLinear") >= 8
    act_dtype = np.int8 if scheme == "trt" else np.uint8
    quants = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    for q in quants:  # every activation is quantized to the scheme's type, per tensor
        zp = inits[q.input[2]]
        assert zp.dtype == act_dtype and zp.size == 1 and inits[q.input[1]].size == 1
        if scheme == "trt":
            assert int(zp) == 0  # symmetric
    if scheme == "cpu":
        assert any(int(inits[q.input[2]]) != 0 for q in quants)  # asymmetric somewhere (the normalised input)
        assert "Relu" not in ops  # removable activations folded into the uint8 range
    weight_dqs = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                  and inits[n.input[0]].dtype == np.int8]
    consumers = {i: n.op_type for n in proto.graph.node for i in n.input}
    assert sorted(consumers[d.output[0]] for d in weight_dqs) == ["Conv", "Conv", "Gemm"]
    for dq in weight_dqs:
        w, scale, zp = (inits[name] for name in dq.input)
        axis = {a.name: a.i for a in dq.attribute}.get("axis", 1)
        assert axis == 0 and scale.shape == (w.shape[0],) and zp.dtype == np.int8 and not zp.any()
    assert {"scheme": scheme, "format": "QDQ", "per_channel_weights": True, "weight_type": "int8",
            "activation_type": "int8" if scheme == "trt" else "uint8", "logits": "float"}.items() \
        <= trained[f"settings_{scheme}"].items()
    producer = {o: n.op_type for n in proto.graph.node for o in n.output}
    assert producer["logits"] == "Gemm"  # float logits: no 8-bit ties between classes


def test_calibration_refuses_wrong_shape_range_and_dtype() -> None:
    good = np.random.default_rng(0).random((10, 3, 8, 8), dtype=np.float32)
    reader = ImageCalibrationReader(good, "input", batch_size=4, expected_chw=(3, 8, 8))
    batches = [b["input"].shape[0] for b in iter(reader.get_next, None)]
    assert batches == [4, 4, 2] and len(reader) == 3 and reader.get_next() is None
    reader.rewind()
    assert reader.get_next()["input"].dtype == np.float32
    with pytest.raises(UsageError, match=r"\(3, 16, 16\), the model takes \(3, 8, 8\)"):
        check_calibration_images(np.zeros((2, 3, 16, 16), np.float32), (3, 8, 8))
    with pytest.raises(UsageError, match="looks like NHWC"):
        check_calibration_images(np.zeros((2, 8, 8, 3), np.float32), (3, 8, 8))
    for bad in (good * 255.0, (good - 0.5) / 0.25):  # raw 0..255 floats, or already-normalised images
        with pytest.raises(UsageError, match="normalisation is inside the model") as info:
            check_calibration_images(bad, (3, 8, 8))
        assert "\n" not in str(info.value) and info.value.exit_code == 2
    with pytest.raises(UsageError, match="divide uint8 pixels by 255"):
        check_calibration_images((good * 255).astype(np.uint8), (3, 8, 8))
    with pytest.raises(UsageError, match="NaN"):
        check_calibration_images(np.full((1, 3, 8, 8), np.nan, np.float32), (3, 8, 8))


def test_quantize_onnx_refuses_bad_calibration_and_unknown_nodes(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "q.onnx"
    with pytest.raises(UsageError, match=r"the model takes \(3, 32, 32\)"):
        quantize_onnx(trained["float"], out, np.zeros((4, 3, 16, 16), np.float32), scheme="cpu")
    with pytest.raises(UsageError, match="normalisation is inside the model"):
        quantize_onnx(trained["float"], out, trained["calib"][:8] * 255, scheme="trt")
    with pytest.raises(UsageError, match="unknown quantization scheme 'tensorrt'"):
        quantize_onnx(trained["float"], out, trained["calib"][:8], scheme="tensorrt")
    with pytest.raises(UsageError, match="exclude node '/net/linear/Gem'.*did you mean '/net/linear/Gemm'"):
        quantize_onnx(trained["float"], out, trained["calib"][:8], scheme="cpu",
                      nodes_to_exclude=["/net/linear/Gem"])
    assert not out.exists()


def test_excluded_node_stays_float(trained: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    settings = quantize_onnx(trained["float"], out, trained["calib"][:64], scheme="cpu",
                             nodes_to_exclude=["/net/linear/Gemm"])
    proto = onnx.load(str(out))
    inits = _inits(proto)
    gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")
    assert gemm.input[1] in inits and inits[gemm.input[1]].dtype == np.float32  # float weight, no DQ
    assert settings["nodes_to_exclude"] == ["/net/linear/Gemm"]
    assert agreement(build_surrogate(out), out, trained["x"][:64])["top1_agreement"] == 1.0


def _activation_scales(path: Path) -> dict[str, float]:
    proto = onnx.load(str(path))
    inits = _inits(proto)
    return {q.input[0]: float(inits[q.input[1]]) for q in proto.graph.node
            if q.op_type == "QuantizeLinear" and q.input[0] not in inits}


@pytest.mark.parametrize("scheme", ["trt", "cpu"])
def test_entropy_calibration_clips_ranges_and_is_not_minmax(
    trained: dict[str, Any], scheme: str, tmp_path: Path
) -> None:
    out = tmp_path / "entropy.onnx"
    settings = quantize_onnx(trained["float"], out, trained["calib"], scheme=scheme, method="entropy")
    minmax, entropy = _activation_scales(trained[scheme]), _activation_scales(out)
    assert minmax.keys() == entropy.keys() and entropy != minmax  # ONNX Runtime's defaults gave MinMax's file
    # the KL threshold lies within the observed range: no scale grows, and the tails are clipped somewhere
    assert all(entropy[t] <= minmax[t] * (1 + 1e-6) for t in minmax)
    assert sum(entropy[t] < 0.9 * minmax[t] for t in minmax) >= 1
    assert settings["calibration_method"] == "entropy" and settings["entropy"]["num_bins"] == 2048
    assert settings["entropy"]["ranges_overridden"] >= len(entropy)
    assert agreement(build_surrogate(out), out, trained["x"][:64])["top1_agreement"] >= 0.95


@pytest.mark.parametrize("scheme", ["trt", "cpu"])
def test_surrogate_matches_onnxruntime_int8(trained: dict[str, Any], scheme: str) -> None:
    surrogate = build_surrogate(trained[scheme])
    assert surrogate.num_fake_quant >= 5 and surrogate.num_quantized_weights == 3
    result = agreement(surrogate, trained[scheme], trained["x"])
    assert result["n"] == 256 and result["top1_agreement"] >= 0.99
    assert result["max_abs_diff"] < 0.05 * result["max_abs_logit"]
    # the surrogate is the INT8 model, not the float one: quantization changes its logits
    with torch.no_grad():
        float_logits = trained["model"](trained["x"])
        ours = surrogate(trained["x"])
    engine = OnnxRuntime(trained[scheme]).predict(trained["x"])
    assert (ours - engine).abs().mean() < 0.25 * (float_logits - engine).abs().mean()


def test_surrogate_gradient_is_straight_through_and_follows_the_float_model(trained: dict[str, Any]) -> None:
    surrogate = build_surrogate(trained["cpu"])
    x, y = trained["x"][:64].clone().requires_grad_(True), trained["y"][:64]
    loss = nn.functional.cross_entropy(surrogate(x), y, reduction="sum")
    (g_sur,) = torch.autograd.grad(loss, x)
    per_sample = g_sur.flatten(1).norm(dim=1)
    assert (per_sample > 0).float().mean() > 0.9  # rounding alone would give zero gradients everywhere
    x2 = x.detach().clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(trained["model"](x2), y, reduction="sum")
    (g_float,) = torch.autograd.grad(loss, x2)
    cos = nn.functional.cosine_similarity(g_sur.flatten(1), g_float.flatten(1), dim=1)
    keep = per_sample > 0
    assert cos[keep].mean() > 0.8, cos


def _linear_classifier() -> nn.Module:
    """Normalize -> strided conv -> flatten -> linear: no nonlinearity, so a straight-through gradient is the
    same whether activations are fake-quantized or not."""
    torch.manual_seed(1)
    return nn.Sequential(Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), nn.Conv2d(3, 4, 4, stride=4),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).eval()


@pytest.mark.parametrize("scheme", ["trt", "cpu"])
def test_fake_quant_gradient_equals_unquantized_gradient_where_nothing_clips(
    trained: dict[str, Any], tmp_path: Path, scheme: str
) -> None:
    path = export_onnx(_linear_classifier(), tmp_path / "lin.onnx")
    calib = trained["calib"][:64]
    quantize_onnx(path, tmp_path / "lin.q.onnx", calib, scheme=scheme)
    surrogate = build_surrogate(tmp_path / "lin.q.onnx")
    x = torch.from_numpy(calib[:16].copy())  # the calibration images: inside every calibrated range

    def grad(enabled: bool) -> tuple[torch.Tensor, torch.Tensor]:
        surrogate.set_fake_quant(enabled)
        xi = x.clone().requires_grad_(True)
        out = surrogate(xi)
        (g,) = torch.autograd.grad(out[:, 3].sum() - out[:, 7].sum(), xi)
        return out.detach(), g

    out_q, g_q = grad(True)
    out_f, g_f = grad(False)
    assert not torch.allclose(out_q, out_f)  # activation quantization is really on ...
    torch.testing.assert_close(g_q, g_f, rtol=1e-5, atol=1e-7)  # ... and its gradient is straight through
    assert g_q.abs().sum() > 0
    surrogate.set_fake_quant(True)
    xi = (x * 0 - 5.0).requires_grad_(True)  # far below the calibrated input range: the input Q saturates
    (g_out,) = torch.autograd.grad(surrogate(xi)[:, 3].sum(), xi)
    assert g_out.abs().sum() == 0


@pytest.mark.parametrize("name", list_models())
def test_interpreter_runs_every_registered_model(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, **TINY[name]).eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    x = torch.rand(4, 3, 32, 32)
    spec, tensors = graph_spec(path)
    with torch.no_grad():  # the float graph interpreted = the torch model (BatchNorm folded or not)
        torch.testing.assert_close(OnnxGraphModule(spec, tensors)(x), model(x), rtol=1e-4, atol=1e-5)
    calib = np.random.default_rng(0).random((16, 3, 32, 32), dtype=np.float32)
    quantize_onnx(path, tmp_path / "m.q.onnx", calib, scheme="cpu")
    result = agreement(build_surrogate(tmp_path / "m.q.onnx"), tmp_path / "m.q.onnx", x)
    assert result["max_abs_diff"] <= 0.05 * max(result["max_abs_logit"], 1e-3)


def test_surrogate_save_load_round_trip(trained: dict[str, Any], tmp_path: Path) -> None:
    surrogate = build_surrogate(trained["trt"])
    path = save_surrogate(surrogate, tmp_path / "surrogate.int8.safetensors")
    sidecar = json.loads((tmp_path / "surrogate.int8.json").read_text())
    assert sidecar["format"] == "rkd-surrogate" and sidecar["kind"] == "onnx-qdq-interpreter"
    assert sidecar["source"]["file"] == "model.trt.onnx" and len(sidecar["graph"]["nodes"]) > 10
    loaded = load_surrogate(path)
    assert next(loaded.parameters()).device.type == "cpu"
    assert not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        assert torch.equal(loaded(trained["x"][:32]), surrogate(trained["x"][:32]))
    with pytest.raises(UsageError, match=".safetensors"):
        save_surrogate(surrogate, tmp_path / "s.pt")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_surrogate(path)
    with pytest.raises(CheckpointError, match="missing"):
        load_surrogate(tmp_path / "nothing.safetensors")
    with pytest.raises(UsageError, match="no QuantizeLinear"):
        build_surrogate(trained["float"])


def test_debug_layers_sorted_worst_first(trained: dict[str, Any]) -> None:
    rows = debug_layers(trained["float"], trained["trt"], trained["calib"][:16])
    assert len(rows) >= 5
    assert [r["sqnr_db"] for r in rows] == sorted(r["sqnr_db"] for r in rows)
    assert {"tensor", "node", "op_type", "sqnr_db", "qdq_sqnr_db"} <= set(rows[0])
    assert any(r["op_type"] == "Conv" and r["node"] for r in rows)
    assert all(np.isfinite(r["sqnr_db"]) for r in rows)


def test_straight_through_engine_value_from_engine_gradient_from_surrogate(trained: dict[str, Any]) -> None:
    engine = OnnxRuntime(trained["cpu"])
    surrogate = build_surrogate(trained["cpu"])
    calls = {"n": 0}
    surrogate.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    wrapped = EngineModel(engine, surrogate)
    assert next(wrapped.parameters()) is next(surrogate.parameters())
    x = trained["x"][:8].clone().requires_grad_(True)
    out = wrapped(x)
    torch.testing.assert_close(out.detach(), engine.predict(x), rtol=0, atol=1e-6)
    (g,) = torch.autograd.grad(out[:, 0].sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(surrogate(x2)[:, 0].sum(), x2)
    torch.testing.assert_close(g, g_ref)
    calls["n"] = 0
    with torch.no_grad():
        wrapped(x)
    assert calls["n"] == 0  # no surrogate pass without gradients
