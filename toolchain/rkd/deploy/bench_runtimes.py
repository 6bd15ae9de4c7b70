"""The runtimes of a bundle that ``rkd bench`` can time (torch, ONNX Runtime files, TensorRT engines), which of
them can run here, and opening them (``rkd.deploy.runtimes.open_runtime``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rkd.deploy.bench_timing import Call
from rkd.deploy.runtimes import SESSION_CONFIG
from rkd.errors import MissingDependencyError, RkdError, UsageError

BASELINE = "onnx-fp32"
#: The ONNX files of a bundle that ``rkd bench`` runs in ONNX Runtime, by runtime name.
ONNX_FILES: dict[str, str] = {
    "onnx-fp32": "model.onnx", "onnx-int8": "model.int8.onnx", "onnx-int8-ptq": "model.int8.ptq.onnx",
}
TENSORRT_PRECISIONS: tuple[str, ...] = ("int8", "fp16", "fp32")
#: Every runtime name a bundle can have (engines of several GPUs with one precision get ``-<gpu slug>`` added).
RUNTIME_NAMES: tuple[str, ...] = ("torch", *ONNX_FILES, *(f"trt-{p}" for p in TENSORRT_PRECISIONS))
#: ONNX Runtime session settings of every bench session: rkd's default (idle intra-op threads sleep, so they do not
#: take the CPU from the runtime timed next: torch's batch-1 call right after an ONNX Runtime call took ~40 ms
#: instead of ~0.1 ms with spinning on).
ORT_SESSION_CONFIG: dict[str, str] = dict(SESSION_CONFIG)


@dataclass
class BundleRuntime:
    """A runtime a bundle offers: its name, backend (``torch``, ``onnxruntime``, ``tensorrt``), file and sha256,
    and either ``skip`` (why it cannot run here, as the error it would raise) or nothing."""

    name: str
    backend: str
    file: Path | None
    sha256: str | None
    skip: RkdError | None = None
    record: dict[str, Any] | None = None


def _engine_precision(name: str, record: Mapping[str, Any] | None) -> str | None:
    precision = (record or {}).get("precision")
    if precision in TENSORRT_PRECISIONS:
        return str(precision)
    parts = name.split(".")
    return parts[-2] if len(parts) >= 3 and parts[-2] in TENSORRT_PRECISIONS else None


def _source_checkpoint(manifest: Mapping[str, Any], checkpoint: Path | None) -> BundleRuntime:
    """The torch row: ``checkpoint`` (which must be the bundle's source) or the one the manifest records."""
    from rkd.atomic import file_sha256

    source = manifest.get("source") if isinstance(manifest.get("source"), Mapping) else {}
    expected = source.get("sha256")
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise UsageError(f"checkpoint not found: '{checkpoint}'")
        actual = file_sha256(checkpoint)
        if expected and actual != expected:
            raise UsageError(f"'{checkpoint}' is not the checkpoint this bundle was exported from (sha256 "
                             f"{actual[:12]}..., the manifest records {str(expected)[:12]}...)")
        return BundleRuntime("torch", "torch", checkpoint, actual)
    recorded = source.get("checkpoint")
    if not recorded:
        return BundleRuntime("torch", "torch", None, None, UsageError(
            "the manifest records no source checkpoint; pass the float checkpoint (--checkpoint)"))
    path = Path(str(recorded))
    if not path.is_file():
        return BundleRuntime("torch", "torch", path, expected, UsageError(
            f"the source checkpoint '{path}' is not there any more; pass it (--checkpoint)"))
    actual = file_sha256(path)
    if expected and actual != expected:
        return BundleRuntime("torch", "torch", path, actual, UsageError(
            f"the source checkpoint '{path}' changed since the export (sha256 {actual[:12]}..., the manifest "
            f"records {str(expected)[:12]}...)"))
    return BundleRuntime("torch", "torch", path, actual)


def _tensorrt_missing() -> str | None:
    """Why TensorRT cannot run here (not installed, no CUDA GPU), or None."""
    from rkd.environment import runtime_availability

    info = runtime_availability()["tensorrt"]
    return None if info.get("available") else str(info.get("why"))


def bundle_runtimes(
    bundle_dir: str | Path, manifest: Mapping[str, Any], *, checkpoint: str | Path | None = None,
    check_tensorrt: bool = True,
) -> list[BundleRuntime]:
    """Every runtime the bundle offers, in :data:`RUNTIME_NAMES` order, each with ``skip`` set when it cannot run
    here before anything is opened (no source checkpoint, no onnxruntime, no tensorrt or CUDA GPU; the last not
    checked with ``check_tensorrt=False``, as when a test injects a tensorrt module)."""
    import importlib.util

    bundle_dir = Path(bundle_dir)
    files = manifest.get("files") or {}
    found = [_source_checkpoint(manifest, Path(checkpoint) if checkpoint is not None else None)]
    ort_missing = None if importlib.util.find_spec("onnxruntime") is not None else MissingDependencyError(
        "onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu for CUDA)")
    for name, file in ONNX_FILES.items():
        if file in files:
            found.append(BundleRuntime(name, "onnxruntime", bundle_dir / file, files[file].get("sha256"),
                                       ort_missing))
    engines = manifest.get("engines") if isinstance(manifest.get("engines"), Mapping) else {}
    listed = sorted(f for f in files if f.lower().endswith((".engine", ".plan")))
    why = _tensorrt_missing() if check_tensorrt and listed else None
    named: dict[str, list[str]] = {}
    for file in listed:
        record = engines.get(file) if isinstance(engines.get(file), Mapping) else None
        named.setdefault(f"trt-{_engine_precision(file, record) or 'unknown'}", []).append(file)
    for base in [f"trt-{p}" for p in (*TENSORRT_PRECISIONS, "unknown")]:
        for file in named.get(base, []):
            slug = file.split(".")[1] if file.count(".") >= 3 else Path(file).stem
            name = base if len(named[base]) == 1 else f"{base}-{slug}"
            record = engines.get(file) if isinstance(engines.get(file), Mapping) else None
            found.append(BundleRuntime(name, "tensorrt", bundle_dir / file, files[file].get("sha256"),
                                       MissingDependencyError(why) if why else None,
                                       dict(record) if record else None))
    return found


def _select(offered: list[BundleRuntime], runtimes: Sequence[str] | None, bundle_dir: Path) -> list[BundleRuntime]:
    """The runtimes to run: all offered, or those named plus the baseline. An unknown or absent name is a
    UsageError; a named runtime that cannot run here raises its skip reason."""
    if runtimes is None:
        return offered
    by_name = {rt.name: rt for rt in offered}
    for name in runtimes:
        if name not in by_name:
            if name in ONNX_FILES:
                hint = " (make it with rkd quantize)" if "int8" in name else ""
                raise UsageError(f"bundle '{bundle_dir}' has no {ONNX_FILES[name]}, so no runtime {name!r}{hint}")
            if name.startswith("trt-") and name.split("-")[1] in TENSORRT_PRECISIONS:
                raise UsageError(f"bundle '{bundle_dir}' has no {name.split('-')[1]} TensorRT engine "
                                 "(build one with rkd export --target trt)")
            raise UsageError(f"unknown runtime {name!r}: this bundle has {', '.join(by_name)}")
        if by_name[name].skip is not None:
            raise by_name[name].skip
    wanted = set(runtimes) | {BASELINE}
    return [rt for rt in offered if rt.name in wanted]



def _open(rt: BundleRuntime, manifest: Mapping[str, Any], *, device: str, batch_size: int, threads: int,
          options: Mapping[str, Mapping[str, Any]]) -> Any:
    """The opened ``Runtime`` of one bundle runtime (``rkd.deploy.runtimes.open_runtime``)."""
    from rkd.deploy.runtimes import open_runtime

    extra = dict(options.get(rt.backend) or {})
    if rt.backend == "torch":
        return open_runtime(rt.file, device=extra.pop("device", device), batch_size=batch_size, **extra)
    if rt.backend == "onnxruntime":
        return open_runtime(rt.file, device=extra.pop("device", device), batch_size=batch_size, threads=threads,
                            **extra)
    runtime = open_runtime(rt.file, manifest=dict(manifest), **extra)
    runtime.batch_size = min(batch_size, int(runtime.max_batch))  # a larger batch is split by Runtime.predict
    return runtime


def _runtime_device(runtime: Any) -> str:
    info_device = getattr(runtime, "device", None)
    if info_device is not None:
        return str(info_device)
    return "cuda" if "CUDAExecutionProvider" in (getattr(runtime, "providers", None) or []) else "cpu"


def _calls(runtime: Any, x1: Any, xb: Any) -> tuple[Call, Call]:
    """The (batch-1, batch) calls of one runtime on inputs moved to its device, synchronised on CUDA."""
    import torch

    device = torch.device(_runtime_device(runtime))
    if runtime.name == "onnxruntime":
        device = torch.device("cpu")  # OnnxRuntime feeds NumPy arrays from host memory
    a, b = x1.to(device), xb.to(device)
    sync = runtime.name == "torch" and device.type == "cuda"

    def call(x: Any) -> Call:
        def run() -> object:
            out = runtime.predict(x)
            if sync:
                torch.cuda.synchronize(device)
            return out
        return run

    return call(a), call(b)
