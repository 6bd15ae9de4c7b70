"""Build a TensorRT engine from an rkd ONNX file: strongly typed, explicit quantization, dynamic batch.

Written to the TensorRT 10 and 11 Python API and nothing older or removed. No machine of the project can
install tensorrt (its libraries come only from NVIDIA's index), so this module was checked against the
documentation and the binding sources, every TensorRT name it uses is checked against the names in the real
bindings wheels of 10.0.1, 10.16.1.11, 11.0.0.114 and 11.4.0.106 (``tests/unit/test_tensorrt_names.py``; a
name used only under a ``tensorrt_major(trt)`` branch is checked only for the majors that branch admits), and
its control flow is tested against ``tests/unit/fake_tensorrt.py``; the real build runs in
``tests/gpu/test_tensorrt_real.py`` wherever ``import tensorrt`` works. API facts relied on, and where they
were checked:

* ``Builder(logger)``, ``Builder.create_network(flags)``, ``create_builder_config()``,
  ``create_optimization_profile()``, ``build_serialized_network(network, config)`` (returns ``IHostMemory``, a
  buffer, or None on failure): Python API reference, Core/Builder
  (docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Builder.html) and
  NVIDIA/TensorRT ``python/src/infer/pyCore.cpp``.
* ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``: 10.x sets it with ``1 << int(flag)``; TensorRT 11 marks it
  "[DEPRECATED] ... Strongly typed mode is always enabled ... retained for API compatibility but is ignored"
  (docs.nvidia.com/deeplearning/tensorrt/11.0.0/_static/python-api/infer/Core/Builder.html), so on 11.x the
  network is created with flags 0.
* ``OnnxParser(network, logger).parse(model: buffer, path=None) -> bool``, ``num_errors`` (property),
  ``get_error(i)`` -> ``ParserError`` whose ``str()`` is "In node N (func): CODE: desc":
  NVIDIA/TensorRT ``python/src/parsers/pyOnnx.cpp`` and the Onnx Parser page of the Python API.
* ``IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE, n)``, ``add_optimization_profile(p)``,
  ``create_timing_cache(buffer)``, ``set_timing_cache(cache, ignore_mismatch) -> bool``,
  ``get_timing_cache()``, ``ITimingCache.serialize()``, ``clear_flag(BuilderFlag.TF32)``: ``pyCore.cpp``
  (IBuilderConfig, ITimingCache). ``BuilderFlag.TF32`` ("Enabled by default") is still a member in
  TensorRT 11: the trtx-sys Rust bindings generated from the 11 headers (docs.rs) list ``kTF32`` and no
  ``kFP16``/``kINT8``, and the 11.0/11.4 bindings wheels carry ``TF32`` and no ``FP16``.
* ``IOptimizationProfile.set_shape(input, min, opt, max)`` (raises RuntimeError on inconsistent shapes):
  ``pyCore.cpp`` and Core/OptimizationProfile.
* Removed in TensorRT 11 (never used here): ``BuilderFlag.FP16/INT8/BF16/FP8/INT4/FP4``,
  ``OBEY_/PREFER_PRECISION_CONSTRAINTS``, ``IBuilderConfig.int8_calibrator``, every INT8 calibrator,
  ``platform_has_fast_fp16/int8``: "Removed Python APIs and Replacements" in the 10.x to 11.x migration guide
  (docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html).
* Precision therefore comes from the ONNX file on both versions: ``int8`` builds the QDQ file (explicit
  quantization), ``fp32`` the float file with TF32 switched off, and ``fp16`` the float file converted to
  float16 inside with float32 input/output (``onnxruntime.transformers.float16.convert_float_to_float16(...,
  keep_io_types=True)``, onnxruntime being a core dependency). NVIDIA's guide names ModelOpt AutoCast for this
  step; it is only on NVIDIA's index, and the I/O-preserving fp16 conversion is the same kind of graph.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from pathlib import Path
from typing import Any

from rkd.atomic import atomic_write, scratch_dir, sweep_scratch
from rkd.checks import check_int
from rkd.deploy.engine_onnx import (  # noqa: F401 - re-exported
    FP16_CONVERSION,
    _one_line,
    checked_onnx,
    convert_to_fp16,
    has_quantize_linear,
)
from rkd.errors import MissingDependencyError, RkdError, UsageError

PRECISIONS: tuple[str, ...] = ("int8", "fp16", "fp32")
INPUT_NAME = "input"
#: The bundle's ONNX file each precision is built from.
BUNDLE_ONNX: dict[str, str] = {"int8": "model.int8.onnx", "fp16": "model.onnx", "fp32": "model.onnx"}
REBUILD_HINT = "rebuild it from the bundle's ONNX with `rkd export … --target trt`"

_log = logging.getLogger(__name__)


def import_tensorrt(trt: Any = None) -> Any:
    """The ``tensorrt`` module (imported here, lazily), or ``trt`` when a test injects a fake one.

    Raises:
        MissingDependencyError: tensorrt is not installed, or is older than 10 (exit 3).
    """
    if trt is None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise MissingDependencyError(
                f"TensorRT is not installed ({exc}): pip install 'rkd[tensorrt]' with NVIDIA's index "
                "(--extra-index-url https://pypi.nvidia.com) on a machine with an NVIDIA GPU, or use "
                "NVIDIA's PyTorch/TensorRT container"
            ) from None
    if tensorrt_major(trt) < 10:
        raise MissingDependencyError(
            f"TensorRT {trt.__version__} is too old: rkd needs TensorRT 10 or 11 (strongly typed networks, "
            "name-based I/O, execute_async_v3)"
        )
    return trt


def tensorrt_major(trt: Any) -> int:
    """The major version of ``trt.__version__`` (e.g. 10 for "10.13.3.9")."""
    match = re.match(r"\s*(\d+)", str(getattr(trt, "__version__", "")))
    if match is None:
        raise MissingDependencyError(
            f"cannot read the TensorRT version from {getattr(trt, '__version__', None)!r}"
        )
    return int(match.group(1))


def require_cuda(what: str) -> None:
    """Raise MissingDependencyError (exit 3) unless torch sees a CUDA GPU.

    Checked before tensorrt is touched: without a GPU ``trt.Builder`` fails with "CUDA initialization failure"
    and then a pybind11 TypeError, which says nothing useful.
    """
    import torch

    if not torch.cuda.is_available():
        raise MissingDependencyError(
            f"{what} needs an NVIDIA GPU with CUDA, and none is usable here (torch.cuda.is_available() is "
            f"False; torch {torch.__version__}, built for CUDA {torch.version.cuda}): run it on a GPU machine"
        )


def current_gpu(device_index: int | None = None) -> dict[str, str]:
    """``{"gpu": name, "compute_capability": "8.9"}`` of a CUDA device (default: the current one)."""
    import torch

    index = torch.cuda.current_device() if device_index is None else device_index
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}


def sm_name(compute_capability: str | None) -> str:
    """``"8.9"`` -> ``"sm_89"``; unknown -> ``"sm_?"``."""
    return f"sm_{str(compute_capability).replace('.', '')}" if compute_capability else "sm_?"


def gpu_slug(gpu_name: str) -> str:
    """A file-name-safe GPU tag: lowercased, every run of non-alphanumerics turned into one ``-``."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    return slug or "gpu"


def engine_file_name(gpu_name: str, precision: str) -> str:
    """``model.<gpu-slug>.<precision>.engine``, the engine's name inside a bundle."""
    return f"model.{gpu_slug(gpu_name)}.{_check_precision(precision)}.engine"


def network_flags(trt: Any) -> int:
    """``create_network`` flags for a strongly typed network on this TensorRT.

    10.x: ``1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)``. 11.x: 0, since networks are always
    strongly typed there and the flag is deprecated and ignored (decided by the version, so the deprecated
    member is never read on 11).
    """
    if tensorrt_major(trt) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def _image_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return check_int("image_size", h), check_int("image_size", w)



def _profile_shapes(
    onnx_path: Path, network: Any, batches: tuple[int, int, int], hw: tuple[int, int]
) -> dict[str, list[int]]:
    """min/opt/max shapes of ``input`` from the parsed network's input (dynamic batch, rest as exported)."""
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    if INPUT_NAME not in inputs:
        raise UsageError(
            f"'{onnx_path}' has no input named '{INPUT_NAME}' (inputs: {', '.join(inputs) or 'none'}); "
            "export it with `rkd export`"
        )
    dims = [int(d) for d in inputs[INPUT_NAME].shape]
    if len(dims) != 4:
        raise UsageError(f"'{onnx_path}' input '{INPUT_NAME}' has shape {dims}; rkd engines take NCHW images")
    if dims[0] >= 0:
        raise UsageError(
            f"'{onnx_path}' input '{INPUT_NAME}' has a fixed batch of {dims[0]}; export it with a dynamic "
            "batch axis"
        )
    rest = [
        3 if dims[1] < 0 else dims[1],
        hw[0] if dims[2] < 0 else dims[2],
        hw[1] if dims[3] < 0 else dims[3],
    ]
    if rest[1:] != list(hw):
        raise UsageError(
            f"'{onnx_path}' takes {rest[1]}x{rest[2]} images but image_size is {hw[0]}x{hw[1]}; pass the "
            "image size the model was exported for"
        )
    return {key: [b, *rest] for key, b in zip(("min", "opt", "max"), batches, strict=True)}


def _check_batches(min_batch: int, opt_batch: int, max_batch: int) -> tuple[int, int, int]:
    """The optimization profile's batch sizes, checked: positive integers, min <= opt <= max."""
    batches = (check_int("min_batch", min_batch), check_int("opt_batch", opt_batch),
               check_int("max_batch", max_batch))
    if not batches[0] <= batches[1] <= batches[2]:
        raise UsageError(f"batch sizes must satisfy min <= opt <= max, got {batches[0]}, {batches[1]}, {batches[2]}")
    return batches


def _configure(trt: Any, builder: Any, config: Any, precision: str, shapes: dict[str, list[int]],
               workspace_bytes: int) -> None:
    """Set up the builder ``config``: the workspace pool limit, TF32 off for fp32, one optimization profile for
    ``input``. (The config is made by the caller, so the TensorRT names check follows it there.)"""
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp32":  # fp32 means fp32: TF32 (on by default) rounds to 10-bit mantissas
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, tuple(shapes["min"]), tuple(shapes["opt"]), tuple(shapes["max"]))
    config.add_optimization_profile(profile)


def _build_and_write(builder: Any, network: Any, config: Any, engine_path: Path, timing_cache: Path | None,
                     what: str) -> tuple[bytes, float]:
    """``build_serialized_network``, then the engine (and the updated timing cache) written atomically: the
    engine's bytes and the build's seconds. A failed build is an :class:`~rkd.errors.RkdError` naming ``what``."""
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise RkdError(f"TensorRT failed to build an engine from {what}: see the TensorRT log above for the reason")
    engine_bytes = bytes(serialized)
    atomic_write(engine_path, lambda tmp: tmp.write_bytes(engine_bytes))
    if timing_cache is not None:
        cache_bytes = bytes(config.get_timing_cache().serialize())
        atomic_write(Path(timing_cache), lambda tmp: tmp.write_bytes(cache_bytes))
    return engine_bytes, seconds


def _parse(trt: Any, parser: Any, model_bytes: bytes, onnx_path: Path) -> None:
    """``OnnxParser.parse`` the model; every parser error on one line in a UsageError when it fails."""
    if not parser.parse(model_bytes):
        errors = [_one_line(str(parser.get_error(i))) for i in range(parser.num_errors)]
        detail = " | ".join(errors) if errors else "no error details"
        raise UsageError(
            f"TensorRT {trt.__version__} cannot parse '{onnx_path}' ({len(errors)} error(s)): {detail}"
        )


def _use_timing_cache(trt: Any, config: Any, timing_cache: Path | None) -> bool | None:
    """Load ``timing_cache`` (empty when missing) into ``config``: whether a saved cache was reused, None without
    a cache file. A cache from another GPU or TensorRT is replaced by a new one, with a warning."""
    if timing_cache is None:
        return None
    timing_cache = Path(timing_cache)
    blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is None:
        raise UsageError(
            f"'{timing_cache}' is not a timing cache this TensorRT {trt.__version__} can read; delete it"
        )
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        _log.warning("timing cache '%s' is from another GPU or TensorRT; starting a new one", timing_cache)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        return False
    return bool(blob)


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    precision: str = "int8",
    min_batch: int = 1,
    opt_batch: int = 32,
    max_batch: int = 256,
    image_size: int | tuple[int, int] = 32,
    workspace_bytes: int = 2 << 30,
    timing_cache: Path | None = None,
    trt: Any = None,
) -> dict[str, Any]:
    """Build ``engine_path`` from ``onnx_path`` with TensorRT and return the engine's record.

    Steps (TensorRT Python API, see the module docstring for where each call was checked): a strongly typed
    network, ``OnnxParser.parse`` of the file's bytes, a builder config with a workspace pool limit, one
    optimization profile for the dynamic batch of ``input`` (shape ``(b, 3, H, W)``), a timing cache loaded
    from and saved back to ``timing_cache``, ``build_serialized_network``, and the engine bytes written
    atomically. Precision comes from the ONNX file only (no builder precision flags, which TensorRT 11
    removed).

    Args:
        onnx_path: the ONNX file; a QDQ file (``model.int8.onnx``) for ``int8``, the float one otherwise.
        engine_path: the engine file to write.
        precision: ``int8`` (explicit quantization from the QDQ file), ``fp16`` (the float file converted to
            float16 inside, float32 I/O) or ``fp32`` (float file, TF32 off).
        min_batch, opt_batch, max_batch: the optimization profile's batch sizes (1 <= min <= opt <= max).
        image_size: image side (or ``(H, W)``) the model was exported for.
        workspace_bytes: ``MemoryPoolType.WORKSPACE`` limit.
        timing_cache: a timing cache file to reuse and update (created when missing); None for none.
        trt: the tensorrt module to use (tests inject a fake); default ``import tensorrt``.

    Returns:
        ``{"file", "sha256", "bytes", "precision", "source_onnx", "source_onnx_sha256", "tensorrt", "gpu",
        "compute_capability", "strongly_typed", "input", "profile": {"min", "opt", "max"}, "workspace_bytes",
        "timing_cache_reused", "build_seconds"}`` (+ ``"onnx_conversion"`` for fp16).

    Raises:
        UsageError: bad arguments, a missing or unreadable ONNX file, ``int8`` on a file without
            QuantizeLinear nodes ("quantize first"), a QDQ file for fp16/fp32, ONNX the parser rejects (all
            its errors on one line), or a bad timing cache file (exit 2).
        MissingDependencyError: no CUDA GPU, or no tensorrt >= 10 (exit 3).
        RkdError: TensorRT could not build the engine (exit 4).
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    _check_precision(precision)
    batches = _check_batches(min_batch, opt_batch, max_batch)
    hw = _image_hw(image_size)
    check_int("workspace_bytes", workspace_bytes)
    data, model_bytes = checked_onnx(onnx_path, precision)

    require_cuda("building a TensorRT engine")
    trt = import_tensorrt(trt)
    gpu = current_gpu()

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)  # kept alive with the network it fills
    _parse(trt, parser, model_bytes, onnx_path)
    shapes = _profile_shapes(onnx_path, network, batches, hw)

    config = builder.create_builder_config()
    _configure(trt, builder, config, precision, shapes, workspace_bytes)
    reused = _use_timing_cache(trt, config, timing_cache)

    what = f"'{onnx_path}' ({precision}, TensorRT {trt.__version__}, {gpu['gpu']})"
    engine_bytes, seconds = _build_and_write(builder, network, config, engine_path, timing_cache, what)

    return {
        "file": engine_path.name, "sha256": hashlib.sha256(engine_bytes).hexdigest(), "bytes": len(engine_bytes),
        "precision": precision, "source_onnx": onnx_path.name, "source_onnx_sha256": hashlib.sha256(data).hexdigest(),
        "tensorrt": str(trt.__version__), "gpu": gpu["gpu"], "compute_capability": gpu["compute_capability"],
        "strongly_typed": True, "input": INPUT_NAME, "profile": shapes, "workspace_bytes": workspace_bytes,
        "timing_cache_reused": reused, "build_seconds": round(seconds, 3),
        **({"onnx_conversion": FP16_CONVERSION} if precision == "fp16" else {}),
    }


def build_bundle_engine(bundle_dir: Path, *, precision: str = "int8", **kw: Any) -> dict[str, Any]:
    """Build ``model.<gpu-slug>.<precision>.engine`` from a bundle's ONNX and record it in the manifest.

    ``int8`` builds ``model.int8.onnx``, ``fp16``/``fp32`` build ``model.onnx``. The engine is built in a temp
    directory beside the bundle and added with :func:`rkd.deploy.bundle.update_bundle` (all or nothing); its
    record (:func:`build_engine`'s return value) goes into the manifest's ``engines`` section under the
    engine's file name, next to the engines already there. ``kw`` goes to :func:`build_engine`.

    Raises:
        CheckpointError: the bundle is missing or fails verification. UsageError: the bundle lacks the
            ONNX file the precision needs, or :func:`build_engine`'s usage errors. MissingDependencyError,
            RkdError: as :func:`build_engine`.
    """
    from rkd.deploy.bundle import read_manifest, update_bundle

    bundle_dir = Path(bundle_dir)
    _check_precision(precision)
    manifest = read_manifest(bundle_dir, verify=True)
    onnx_name = BUNDLE_ONNX[precision]
    if onnx_name not in manifest.get("files", {}):
        hint = (
            "quantize first: rkd quantize"
            if precision == "int8"
            else "export it with `rkd export … --target onnx`"
        )
        raise UsageError(f"bundle '{bundle_dir}' has no {onnx_name} for a {precision} engine: {hint}")
    require_cuda("building a TensorRT engine")
    name = engine_file_name(current_gpu()["gpu"], precision)
    sweep_scratch(bundle_dir.parent, bundle_dir.name)
    with scratch_dir(bundle_dir.parent, bundle_dir.name, "trt") as tmp:
        built = tmp / name
        info = build_engine(bundle_dir / onnx_name, built, precision=precision, **kw)
        engines = dict(manifest.get("engines") or {})
        engines[name] = info
        update_bundle(bundle_dir, add={name: built}, sections={"engines": engines})
    return info
