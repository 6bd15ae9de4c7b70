"""The TensorRT backend's control flow, against ``fake_tensorrt`` (no machine here can install TensorRT).

Covered: the builder sequence and the profile's min/opt/max, strongly typed networks on 10.x and no flags on
11.x, no weak-typing or removed API touched on either version, parser errors as one line, a failed build, the
timing cache round trip, INT8 refused without Q/DQ (real ONNX files written with ``onnx.helper``), the fp16
conversion, missing GPU / tensorrt as exit 3, the version/SM check before deserialising, and the runtime's I/O
(shapes set, torch buffers bound by address, large batches split, small ones padded). The CUDA-marked test at
the end runs the same runtime flow on a GPU (stream handle, device memory) where one exists.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from rkd.deploy import tensorrt_build
from rkd.deploy.bundle import read_manifest, stage_bundle, write_manifest
from rkd.deploy.runtimes import open_runtime
from rkd.deploy.tensorrt_build import build_bundle_engine, build_engine, engine_file_name, gpu_slug
from rkd.deploy.tensorrt_runtime import TensorRTRuntime
from rkd.errors import CheckpointError, MissingDependencyError, RkdError, UsageError

sys.path.insert(0, str(Path(__file__).parent))
from fake_tensorrt import CACHE_MAGIC, PLAN_MAGIC, make_fake_tensorrt, reference_logits  # noqa: E402

FAKE_GPU = {"gpu": "NVIDIA Fake GPU 80GB", "compute_capability": "8.9"}
SIDE = 4  # tiny images keep the ONNX files small
CLASSES = 10


# -- tiny real ONNX files ------------------------------------------------------------------------------------


def _onnx_model(*, qdq: bool, batch: int | str = "batch") -> onnx.ModelProto:
    """input (N, 3, 4, 4) -> [QuantizeLinear -> DequantizeLinear] -> Flatten -> Gemm -> logits (N, 10)."""
    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(3 * SIDE * SIDE, CLASSES, generator=gen) * 0.1).numpy()
    inits = [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(torch.zeros(CLASSES).numpy(), "B")]
    nodes = []
    x = "input"
    if qdq:
        inits += [
            numpy_helper.from_array(torch.tensor(1 / 127, dtype=torch.float32).numpy(), "scale"),
            helper.make_tensor("zero", TensorProto.INT8, [], [0]),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["input", "scale", "zero"], ["input_q"]),
            helper.make_node("DequantizeLinear", ["input_q", "scale", "zero"], ["input_dq"]),
        ]
        x = "input_dq"
    nodes += [
        helper.make_node("Flatten", [x], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, CLASSES])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture
def float_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(_onnx_model(qdq=False), path)
    return path


@pytest.fixture
def qdq_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "model.int8.onnx"
    onnx.save(_onnx_model(qdq=True), path)
    return path


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Pretend a CUDA GPU is present (the fake does the rest); the GPU name/SM come from FAKE_GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(tensorrt_build, "current_gpu", lambda device_index=None: dict(FAKE_GPU))
    return FAKE_GPU


def _build(onnx_path: Path, out: Path, fake: Any, **kw: Any) -> dict[str, Any]:
    kw.setdefault("image_size", SIDE)
    return build_engine(onnx_path, out, trt=fake, **kw)


# -- building ------------------------------------------------------------------------------------------------


def test_builder_flow_profile_and_engine_record_on_10(gpu: dict, qdq_onnx: Path, tmp_path: Path) -> None:
    fake = make_fake_tensorrt("10.9.0.34")
    out = tmp_path / "model.fake.int8.engine"
    info = _build(qdq_onnx, out, fake, min_batch=2, opt_batch=16, max_batch=64, workspace_bytes=1 << 28)
    calls = fake.state
    assert calls.named("Builder") == [("Builder", fake.Logger.WARNING)]
    assert calls.named("create_network") == [("create_network", 1 << 0)]  # STRONGLY_TYPED
    assert calls.named("set_memory_pool_limit") == [
        ("set_memory_pool_limit", fake.MemoryPoolType.WORKSPACE, 1 << 28)
    ]
    assert calls.named("set_shape") == [
        ("set_shape", "input", (2, 3, SIDE, SIDE), (16, 3, SIDE, SIDE), (64, 3, SIDE, SIDE))
    ]
    assert len(calls.named("add_optimization_profile")) == 1
    assert calls.named("set_flag") == [] and calls.named("clear_flag") == []  # int8 comes from the Q/DQ nodes
    assert calls.touched == []
    data = out.read_bytes()
    assert data.startswith(PLAN_MAGIC)
    assert info["sha256"] == hashlib.sha256(data).hexdigest() and info["bytes"] == len(data)
    assert info["file"] == out.name and info["precision"] == "int8" and info["tensorrt"] == "10.9.0.34"
    assert info["gpu"] == FAKE_GPU["gpu"] and info["compute_capability"] == "8.9"
    assert info["profile"] == {
        "min": [2, 3, SIDE, SIDE],
        "opt": [16, 3, SIDE, SIDE],
        "max": [64, 3, SIDE, SIDE],
    }
    assert info["source_onnx"] == "model.int8.onnx"
    assert info["source_onnx_sha256"] == hashlib.sha256(qdq_onnx.read_bytes()).hexdigest()
    assert info["strongly_typed"] is True and info["timing_cache_reused"] is None
    assert info["build_seconds"] >= 0


@pytest.mark.parametrize("precision", ["int8", "fp16", "fp32"])
def test_tensorrt_11_builds_without_flags_or_removed_apis(
    gpu: dict, float_onnx: Path, qdq_onnx: Path, tmp_path: Path, precision: str
) -> None:
    fake = make_fake_tensorrt("11.4.0.11")
    src = qdq_onnx if precision == "int8" else float_onnx
    info = _build(src, tmp_path / "e.engine", fake, precision=precision)
    assert fake.state.named("create_network") == [("create_network", 0)]  # always strongly typed on 11
    assert fake.state.touched == []  # no STRONGLY_TYPED, BuilderFlag.FP16/INT8, calibrators, platform_has_*
    assert info["precision"] == precision and info["tensorrt"] == "11.4.0.11"


@pytest.mark.parametrize("precision", ["int8", "fp16", "fp32"])
def test_tensorrt_10_never_uses_weak_typing(
    gpu: dict, float_onnx: Path, qdq_onnx: Path, tmp_path: Path, precision: str
) -> None:
    fake = make_fake_tensorrt("10.0.1.6")
    _build(qdq_onnx if precision == "int8" else float_onnx, tmp_path / "e.engine", fake, precision=precision)
    assert fake.state.named("create_network") == [("create_network", 1)]
    assert fake.state.touched == []
    assert [c for c in fake.state.named("set_flag")] == []


def test_fake_11_really_lacks_the_removed_api() -> None:
    fake = make_fake_tensorrt("11.4.0.11")
    for get in (
        lambda: fake.BuilderFlag.FP16,
        lambda: fake.BuilderFlag.INT8,
        lambda: fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED,
        lambda: fake.IInt8EntropyCalibrator2,
        lambda: fake.Builder(fake.Logger()).create_builder_config().int8_calibrator,
    ):
        with pytest.raises(AttributeError):
            get()
    assert fake.state.touched == [
        "BuilderFlag.FP16",
        "BuilderFlag.INT8",
        "NetworkDefinitionCreationFlag.STRONGLY_TYPED",
        "IInt8EntropyCalibrator2",
        "IBuilderConfig.int8_calibrator",
    ]


def test_fp32_switches_tf32_off_and_fp16_builds_a_float16_onnx(
    gpu: dict, float_onnx: Path, tmp_path: Path
) -> None:
    fake = make_fake_tensorrt()
    _build(float_onnx, tmp_path / "a.engine", fake, precision="fp32")
    assert fake.state.named("clear_flag") == [("clear_flag", fake.BuilderFlag.TF32)]
    fake = make_fake_tensorrt()
    info = _build(float_onnx, tmp_path / "b.engine", fake, precision="fp16")
    assert fake.state.named("clear_flag") == [] and fake.state.named("set_flag") == []
    parsed = fake.state.parsed_models[-1]
    assert parsed.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # float32 I/O kept
    assert parsed.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert {i.data_type for i in parsed.graph.initializer if i.name.startswith("W")} == {TensorProto.FLOAT16}
    assert "Cast" in {n.op_type for n in parsed.graph.node}
    onnx.checker.check_model(parsed)
    assert "keep_io_types=True" in info["onnx_conversion"]


def test_parser_errors_become_one_usage_error_line(gpu: dict, float_onnx: Path, tmp_path: Path) -> None:
    fake = make_fake_tensorrt(
        parse_errors=["Unsupported operator Foo\nwhile importing node 3", "bad dims in Gemm"]
    )
    with pytest.raises(UsageError) as info:
        _build(float_onnx, tmp_path / "e.engine", fake, precision="fp32")
    msg = str(info.value)
    assert info.value.exit_code == 2 and "\n" not in msg
    assert str(float_onnx) in msg and "2 error(s)" in msg
    assert "In node 0 (parseGraph): UNSUPPORTED_NODE: Unsupported operator Foo while importing node 3" in msg
    assert "In node 1 (parseGraph): UNSUPPORTED_NODE: bad dims in Gemm" in msg
    assert not (tmp_path / "e.engine").exists()


def test_build_returning_none_is_an_internal_error(gpu: dict, qdq_onnx: Path, tmp_path: Path) -> None:
    fake = make_fake_tensorrt(build_fails=True)
    with pytest.raises(RkdError) as info:
        _build(qdq_onnx, tmp_path / "e.engine", fake)
    assert info.value.exit_code == 4 and "TensorRT failed to build" in str(info.value)
    assert not (tmp_path / "e.engine").exists()


def test_timing_cache_is_written_then_reused(gpu: dict, qdq_onnx: Path, tmp_path: Path) -> None:
    cache = tmp_path / "caches" / "trt.timing"
    fake = make_fake_tensorrt()
    first = _build(qdq_onnx, tmp_path / "a.engine", fake, timing_cache=cache)
    assert fake.state.named("create_timing_cache") == [("create_timing_cache", b"")]
    assert cache.read_bytes() == CACHE_MAGIC + b"1" and first["timing_cache_reused"] is False
    fake = make_fake_tensorrt()
    second = _build(qdq_onnx, tmp_path / "b.engine", fake, timing_cache=cache)
    assert fake.state.named("create_timing_cache") == [("create_timing_cache", CACHE_MAGIC + b"1")]
    assert fake.state.named("set_timing_cache") == [("set_timing_cache", 1, False)]
    assert cache.read_bytes() == CACHE_MAGIC + b"2" and second["timing_cache_reused"] is True


def test_timing_cache_from_another_gpu_starts_fresh_and_a_foreign_file_is_refused(
    gpu: dict, qdq_onnx: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "trt.timing"
    cache.write_bytes(CACHE_MAGIC + b"5")
    fake = make_fake_tensorrt(timing_cache_mismatch=True)
    info = _build(qdq_onnx, tmp_path / "a.engine", fake, timing_cache=cache)
    assert info["timing_cache_reused"] is False and cache.read_bytes() == CACHE_MAGIC + b"1"
    cache.write_bytes(b"not a cache")
    with pytest.raises(UsageError, match="not a timing cache"):
        _build(qdq_onnx, tmp_path / "b.engine", make_fake_tensorrt(), timing_cache=cache)


def test_int8_needs_quantize_linear_nodes(
    gpu: dict, float_onnx: Path, qdq_onnx: Path, tmp_path: Path
) -> None:
    fake = make_fake_tensorrt()
    with pytest.raises(UsageError, match="quantize first: rkd quantize") as info:
        _build(float_onnx, tmp_path / "e.engine", fake, precision="int8")
    assert info.value.exit_code == 2 and str(float_onnx) in str(info.value)
    with pytest.raises(UsageError, match="quantized \\(QDQ\\) model"):
        _build(qdq_onnx, tmp_path / "e.engine", fake, precision="fp32")
    assert fake.state.calls == []  # refused before TensorRT was touched


def test_no_gpu_is_exit_3_before_tensorrt_is_touched(
    monkeypatch: pytest.MonkeyPatch, qdq_onnx: Path, tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fake = make_fake_tensorrt()
    with pytest.raises(MissingDependencyError) as info:
        _build(qdq_onnx, tmp_path / "e.engine", fake)
    assert (
        info.value.exit_code == 3
        and "GPU" in str(info.value)
        and "torch.cuda.is_available()" in str(info.value)
    )
    assert fake.state.calls == []
    with pytest.raises(MissingDependencyError):
        TensorRTRuntime(
            qdq_onnx, trt=fake
        )  # the runtime checks the GPU first too (any existing file will do)


def test_missing_or_old_tensorrt_is_exit_3(
    gpu: dict, qdq_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(MissingDependencyError, match="TensorRT is not installed") as info:
        _build(qdq_onnx, tmp_path / "e.engine", None)
    assert info.value.exit_code == 3 and "pypi.nvidia.com" in str(info.value)
    with pytest.raises(MissingDependencyError, match="too old"):
        _build(qdq_onnx, tmp_path / "e.engine", make_fake_tensorrt("8.6.1.6"))


def test_bad_arguments_are_usage_errors(gpu: dict, qdq_onnx: Path, tmp_path: Path) -> None:
    fake = make_fake_tensorrt()
    out = tmp_path / "e.engine"
    for kw, text in [
        ({"precision": "int4"}, "precision must be one of"),
        ({"min_batch": 8, "opt_batch": 4}, "min <= opt <= max"),
        ({"max_batch": 0}, "max_batch must be an integer"),
        ({"image_size": 32}, "takes 4x4 images but image_size is 32x32"),
    ]:
        with pytest.raises(UsageError, match=text):
            _build(qdq_onnx, out, fake, **kw)
    with pytest.raises(UsageError, match="ONNX file not found"):
        _build(tmp_path / "missing.onnx", out, fake)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 not protobuf \xff" * 3)
    with pytest.raises(UsageError, match="is not an ONNX model"):
        _build(junk, out, fake)
    fixed = tmp_path / "fixed.int8.onnx"
    onnx.save(_onnx_model(qdq=True, batch=8), fixed)
    with pytest.raises(UsageError, match="fixed batch of 8"):
        _build(fixed, out, fake)


def test_gpu_slug_and_engine_name() -> None:
    assert gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert gpu_slug("NVIDIA GeForce RTX 4090 (laptop)") == "nvidia-geforce-rtx-4090-laptop"
    assert engine_file_name("Orin (nvgpu)", "int8") == "model.orin-nvgpu.int8.engine"


# -- running -------------------------------------------------------------------------------------------------


def _engine(gpu: dict, qdq_onnx: Path, tmp_path: Path, fake: Any, **kw: Any) -> tuple[Path, dict[str, Any]]:
    out = tmp_path / "model.nvidia-fake-gpu-80gb.int8.engine"
    info = _build(qdq_onnx, out, fake, **kw)
    return out, {"engines": {out.name: info}}


def test_runtime_binds_torch_buffers_by_name_and_runs(gpu: dict, qdq_onnx: Path, tmp_path: Path) -> None:
    fake = make_fake_tensorrt()
    path, manifest = _engine(gpu, qdq_onnx, tmp_path, fake)
    fake.state.calls.clear()
    runtime = TensorRTRuntime(path, manifest, trt=fake, device="cpu")
    x = torch.rand(5, 3, SIDE, SIDE)
    logits = runtime.predict(x)
    assert logits.dtype == torch.float32 and logits.device == x.device
    torch.testing.assert_close(logits, reference_logits(x, CLASSES))
    calls = fake.state
    assert calls.named("set_input_shape") == [("set_input_shape", "input", (5, 3, SIDE, SIDE))]
    bound = {c[1] for c in calls.named("set_tensor_address")}
    assert bound == {"input", "logits"} and all(c[2] != 0 for c in calls.named("set_tensor_address"))
    assert calls.named("execute_async_v3") == [("execute_async_v3", 0)]  # CPU path: no CUDA stream
    info = runtime.describe()
    assert (
        info["runtime"] == "tensorrt"
        and info["tensorrt"] == "10.9.0.34"
        and info["compute_capability"] == "8.9"
    )
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and info["file"] == str(path)
    assert (
        info["precision"] == "int8"
        and info["batch_size"] == 256
        and info["profile"]["max"] == [256, 3, SIDE, SIDE]
    )


def test_runtime_splits_batches_above_the_profile_max_and_pads_below_its_min(
    gpu: dict, qdq_onnx: Path, tmp_path: Path
) -> None:
    fake = make_fake_tensorrt()
    path, manifest = _engine(gpu, qdq_onnx, tmp_path, fake, min_batch=4, opt_batch=4, max_batch=8)
    runtime = TensorRTRuntime(path, manifest, trt=fake, device="cpu")
    assert runtime.batch_size == 8
    fake.state.calls.clear()
    x = torch.rand(19, 3, SIDE, SIDE)
    torch.testing.assert_close(runtime.predict(x), reference_logits(x, CLASSES))
    shapes = [c[2][0] for c in fake.state.named("set_input_shape")]
    assert shapes == [8, 8, 4]  # 8 + 8 + 3 images, the last chunk padded up to the profile's min of 4
    assert len(fake.state.named("execute_async_v3")) == 3
    small = TensorRTRuntime(path, manifest, trt=fake, device="cpu", batch_size=5)
    fake.state.calls.clear()
    torch.testing.assert_close(small.predict(x), reference_logits(x, CLASSES))
    assert [c[2][0] for c in fake.state.named("set_input_shape")] == [5, 5, 5, 4]
    with pytest.raises(UsageError, match="max batch 8"):
        TensorRTRuntime(path, manifest, trt=fake, device="cpu", batch_size=9)
    with pytest.raises(UsageError, match="takes images shaped"):
        runtime.predict(torch.rand(2, 3, SIDE + 1, SIDE))


@pytest.mark.parametrize(
    ("version", "cc", "expected"),
    [
        ("10.10.0.31", "8.9", "TensorRT 10.10.0.31 / sm_89"),
        ("10.9.0.34", "9.0", "TensorRT 10.9.0.34 / sm_90"),
    ],
)
def test_version_or_sm_mismatch_refuses_before_deserialising(
    gpu: dict,
    qdq_onnx: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    version: str,
    cc: str,
    expected: str,
) -> None:
    path, manifest = _engine(gpu, qdq_onnx, tmp_path, make_fake_tensorrt("10.9.0.34"))
    monkeypatch.setattr(
        tensorrt_build,
        "current_gpu",
        lambda device_index=None: {"gpu": "Other GPU", "compute_capability": cc},
    )
    fake = make_fake_tensorrt(version)
    with pytest.raises(MissingDependencyError) as info:
        TensorRTRuntime(path, manifest, trt=fake, device="cpu")
    msg = str(info.value)
    assert info.value.exit_code == 3
    assert "built with TensorRT 10.9.0.34 for sm_89" in msg and expected in msg
    assert "rebuild it from the bundle's ONNX with `rkd export … --target trt`" in msg
    assert fake.state.named("deserialize_cuda_engine") == []


def test_deserialize_returning_none_is_exit_3(gpu: dict, qdq_onnx: Path, tmp_path: Path) -> None:
    path, _ = _engine(gpu, qdq_onnx, tmp_path, make_fake_tensorrt("10.9.0.34"))
    for fake in (make_fake_tensorrt("10.9.0.34", deserialize_fails=True), make_fake_tensorrt("10.11.0.33")):
        with pytest.raises(MissingDependencyError, match="cannot deserialise .*rebuild it") as info:
            TensorRTRuntime(path, None, trt=fake, device="cpu")  # no manifest record: TensorRT itself refuses
        assert info.value.exit_code == 3


def test_runtime_refuses_a_changed_file_a_failed_run_and_cpu_without_a_fake(
    gpu: dict, qdq_onnx: Path, tmp_path: Path
) -> None:
    fake = make_fake_tensorrt()
    path, manifest = _engine(gpu, qdq_onnx, tmp_path, fake)
    changed = tmp_path / "changed" / path.name
    changed.parent.mkdir()
    changed.write_bytes(path.read_bytes() + b" ")
    with pytest.raises(CheckpointError, match="does not match its manifest record"):
        TensorRTRuntime(changed, manifest, trt=fake, device="cpu")
    failing = make_fake_tensorrt(execute_fails=True)
    runtime = TensorRTRuntime(path, manifest, trt=failing, device="cpu")
    with pytest.raises(RkdError, match="execution of .* failed") as info:
        runtime.predict(torch.rand(2, 3, SIDE, SIDE))
    assert info.value.exit_code == 4
    with pytest.raises(UsageError, match="run on a CUDA device"):
        TensorRTRuntime(path, manifest, device="cpu")
    with pytest.raises(UsageError, match="engine not found"):
        TensorRTRuntime(tmp_path / "nope.engine", trt=fake, device="cpu")


def test_open_runtime_opens_an_engine_lazily(gpu: dict, qdq_onnx: Path, tmp_path: Path) -> None:
    fake = make_fake_tensorrt()
    path, manifest = _engine(gpu, qdq_onnx, tmp_path, fake)
    runtime = open_runtime(path, manifest=manifest, trt=fake, device="cpu")
    assert isinstance(runtime, TensorRTRuntime) and runtime.name == "tensorrt"
    x = torch.rand(3, 3, SIDE, SIDE)
    torch.testing.assert_close(runtime(x), reference_logits(x, CLASSES))


# -- bundles -------------------------------------------------------------------------------------------------


def _bundle(tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    with stage_bundle(out, force=False) as stage:
        onnx.save(_onnx_model(qdq=False), stage / "model.onnx")
        onnx.save(_onnx_model(qdq=True), stage / "model.int8.onnx")
        write_manifest(
            stage, {"model": {"name": "tiny"}, "input": {"name": "input"}, "output": {"name": "logits"}}
        )
    return out


def test_bundle_engines_are_recorded_in_the_manifest(
    gpu: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = _bundle(tmp_path)
    fake = make_fake_tensorrt("10.9.0.34")
    int8 = build_bundle_engine(bundle, precision="int8", trt=fake, image_size=SIDE)
    fp32 = build_bundle_engine(bundle, precision="fp32", trt=fake, image_size=SIDE)
    manifest = read_manifest(bundle, verify=True)
    names = ["model.nvidia-fake-gpu-80gb.int8.engine", "model.nvidia-fake-gpu-80gb.fp32.engine"]
    assert sorted(manifest["engines"]) == sorted(names)
    assert manifest["engines"][names[0]] == int8 and manifest["engines"][names[1]] == fp32
    assert int8["source_onnx"] == "model.int8.onnx" and fp32["source_onnx"] == "model.onnx"
    for name in names:
        assert manifest["files"][name]["sha256"] == manifest["engines"][name]["sha256"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]  # no temp dirs left behind
    runtime = TensorRTRuntime(
        bundle / names[0], trt=fake, device="cpu"
    )  # reads manifest.json beside the engine
    assert runtime.describe()["precision"] == "int8"
    with pytest.raises(MissingDependencyError, match="built with TensorRT 10.9.0.34 for sm_89.*rebuild"):
        TensorRTRuntime(bundle / names[0], trt=make_fake_tensorrt("11.4.0.11"), device="cpu")


def test_bundle_without_the_needed_onnx_says_what_to_run(gpu: dict, tmp_path: Path) -> None:
    out = tmp_path / "floatonly"
    with stage_bundle(out, force=False) as stage:
        onnx.save(_onnx_model(qdq=False), stage / "model.onnx")
        write_manifest(stage, {"model": {"name": "tiny"}})
    with pytest.raises(UsageError, match="no model.int8.onnx .*quantize first: rkd quantize"):
        build_bundle_engine(out, precision="int8", trt=make_fake_tensorrt(), image_size=SIDE)


# -- the same runtime flow on a real CUDA device (fake TensorRT, real device memory and stream) --------------


@pytest.mark.cuda
def test_runtime_on_cuda_memory_and_stream(qdq_onnx: Path, tmp_path: Path) -> None:
    fake = make_fake_tensorrt(memory="cuda")
    out = tmp_path / "e.engine"
    info = _build(qdq_onnx, out, fake, opt_batch=8, max_batch=8)
    runtime = TensorRTRuntime(out, {"engines": {out.name: info}}, trt=fake)
    x = torch.rand(13, 3, SIDE, SIDE)
    logits = runtime.predict(x)
    assert logits.device == x.device
    torch.testing.assert_close(logits, reference_logits(x, CLASSES))
    handles = {c[1] for c in fake.state.named("execute_async_v3")}
    assert handles == {torch.cuda.current_stream().cuda_stream}
    y = runtime.predict(x.cuda())
    assert y.is_cuda


# -- rkd verify on an engine ---------------------------------------------------------------------------------


def _fake_engine_function_as_onnx(path: Path) -> Path:
    """An ONNX file computing exactly what the fake engine computes (a perfect surrogate)."""
    weight = torch.zeros(3 * SIDE * SIDE, CLASSES)
    weight[torch.arange(CLASSES), torch.arange(CLASSES)] = 2.0
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "W", "B"], ["logits"])],
        "fake-function",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=[numpy_helper.from_array(weight.numpy(), "W"),
                     numpy_helper.from_array(-torch.ones(CLASSES).numpy(), "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_verify_attacks_a_tensorrt_engine_of_a_bundle(gpu: dict, tmp_path: Path) -> None:
    from dataclasses import replace

    from rkd.verify.verification import VerifyRequest, verify_artifact

    bundle = _bundle(tmp_path)
    fake = make_fake_tensorrt()
    info = build_bundle_engine(bundle, precision="int8", trt=fake, image_size=SIDE)
    request = VerifyRequest(
        artifact=bundle / info["file"], dataset="synthetic", data_options={"image_size": SIDE, "n": 64}, n=64,
        attacks="fgsm,pgd5", eps=16 / 255, alpha=4 / 255, device="cpu", runtime_options={"trt": fake},
        surrogate=_fake_engine_function_as_onnx(tmp_path / "exact.onnx"))
    rep = verify_artifact(request)
    assert rep["artifact"]["kind"] == "tensorrt" and rep["artifact"]["runtime"] == "tensorrt"
    assert (rep["agreement"]["clean"]["top1_agreement"] == 1.0
            and rep["agreement"]["adversarial"]["top1_agreement"] == 1.0)
    assert rep["reference"]["file"].endswith("model.onnx") and "drop" in rep
    assert not any("agreement" in w for w in rep["warnings"])
    assert rep["worst_case"]["correct"] <= rep["attacks"]["pgd5"]["correct"] <= rep["attacks"]["clean"]["correct"]
    # The default gradient source is the engine's source ONNX from the manifest; it computes something else than
    # this fake engine, and the report says its gradients are not to be trusted.
    rep = verify_artifact(replace(request, surrogate=None))
    assert rep["surrogate"]["file"].endswith("model.int8.onnx")
    assert any("agreement on clean inputs" in w for w in rep["warnings"])
