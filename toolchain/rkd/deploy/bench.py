"""Inference cost of a bundle: batch-1 latency and batch throughput of every runtime that can run it here.

The runtimes of a bundle (:func:`bundle_runtimes`), each by the name ``rkd bench --runtime`` takes:

==================  ===========================================================  ==============================
name                file                                                         runs in
==================  ===========================================================  ==============================
``torch``           the source checkpoint the manifest records (``source``),     torch (``TorchRuntime``)
                    when it is still there with the recorded sha256
``onnx-fp32``       ``model.onnx`` (the baseline of every ratio)                 ONNX Runtime
``onnx-int8``       ``model.int8.onnx`` (``rkd quantize``)                       ONNX Runtime
``onnx-int8-ptq``   ``model.int8.ptq.onnx`` (kept by ``rkd quantize --qat``)     ONNX Runtime
``trt-<precision>`` ``model.<gpu>.<precision>.engine`` (``engines`` section)     TensorRT (CUDA GPU)
==================  ===========================================================  ==============================

Every file is the bundle's own, checked against the manifest's sha256 first (``read_manifest(verify=True)``, as
``rkd verify`` does). A runtime that cannot run on this machine (no tensorrt, no CUDA GPU, an engine built for
another GPU or TensorRT, a checkpoint no longer at its path) is reported as skipped, with the reason, unless it
was asked for by name: then it is an error (exit 3 for a missing backend, 2 otherwise).

Timing (:func:`measure`): ``warmup`` untimed rounds, then timed rounds in which every runtime makes one batch-1
call and one call on ``batch_size`` images, in an order that rotates from round to round, so that load on the
machine falls on all runtimes alike. Each call is timed with ``time.perf_counter`` around ``Runtime.predict``
(input already on the runtime's device; on CUDA the stream is synchronised before the clock stops:
``torch.cuda.synchronize`` for torch, ``TensorRTRuntime`` synchronises itself after ``execute_async_v3``; ONNX
Runtime's ``InferenceSession.run`` returns host arrays). Inputs are uniform random images in [0, 1] of the
manifest's input shape from a seeded ``torch.Generator``. torch runs with ``torch.set_num_threads(threads)``,
ONNX Runtime with ``SessionOptions.intra_op_num_threads = threads``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rkd.deploy.bench_runtimes import (  # noqa: F401 - re-exported: rkd.deploy.bench is the public module
    BASELINE,
    ONNX_FILES,
    ORT_SESSION_CONFIG,
    RUNTIME_NAMES,
    TENSORRT_PRECISIONS,
    BundleRuntime,
    _calls,
    _open,
    _runtime_device,
    _select,
    _tensorrt_missing,
    bundle_runtimes,
)
from rkd.deploy.bench_timing import (  # noqa: F401 - re-exported
    DEFAULT_ITERS,
    MIN_ROUNDS,
    Call,
    Timing,
    measure,
    percentile,
    summarize,
)
from rkd.errors import CheckpointError, MissingDependencyError, UsageError

FORMAT = "rkd-bench"
FORMAT_VERSION = 1


# -- results -------------------------------------------------------------------------------------------------


@dataclass
class RuntimeResult:
    """One runtime's row: what ran (file, sha256, device, threads, batch size, input shape) and, when it ran,
    batch-1 latency (p50, p90, mean, min, max in ms over ``rounds`` calls), throughput at ``batch_size``
    (median, min, max in images/s) and both as ratios to the baseline: ``latency_speedup`` = baseline p50 / p50,
    ``throughput_ratio`` = throughput / baseline throughput (above 1: faster than the baseline). ``status`` is
    ``measured`` or ``skipped`` (then ``reason`` says why)."""

    name: str
    backend: str
    file: str | None
    sha256: str | None
    status: str
    reason: str | None = None
    device: str | None = None
    threads: int | None = None
    batch_size: int | None = None
    rounds: int | None = None
    input_shape: list[int] | None = None
    latency_ms: dict[str, float] | None = None
    throughput: dict[str, float] | None = None
    vs_baseline: dict[str, float] | None = None
    details: dict[str, Any] | None = None

    @property
    def measured(self) -> bool:
        """Whether this runtime ran (else it was skipped)."""
        return self.status == "measured"


@dataclass
class BenchReport:
    """The result of :func:`bench_bundle`: settings, machine, versions, and one :class:`RuntimeResult` per
    runtime of the bundle (measured or skipped), in :data:`RUNTIME_NAMES` order."""

    bundle: str
    model: str | None
    input_shape: list[int]
    batch_size: int
    warmup: int
    rounds: int
    seconds: float | None
    threads: int
    device: str
    seed: int
    baseline: str | None
    runtimes: dict[str, RuntimeResult]
    machine: dict[str, Any]
    versions: dict[str, str | None]
    created: str
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (``format: rkd-bench``)."""
        data = asdict(self)
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **data}

    def write_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON, atomically (``rkd.atomic.atomic_write_text``)."""
        import json

        from rkd.atomic import atomic_write_text

        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")



def _input_shape(manifest: Mapping[str, Any], bundle_dir: Path) -> list[int]:
    shape = (manifest.get("input") or {}).get("shape") if isinstance(manifest.get("input"), Mapping) else None
    if (not isinstance(shape, list) or len(shape) != 4
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape[1:])):
        raise CheckpointError(f"bundle '{bundle_dir}': the manifest's input shape {shape!r} is not [N, C, H, W]; "
                              "re-export the bundle")
    return [int(d) for d in shape[1:]]


def _check_settings(batch_size: int, warmup: int, iters: int | None, seconds: float | None,
                    threads: int | None) -> None:
    def positive_int(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    if not positive_int(batch_size):
        raise UsageError(f"batch size must be a positive integer, got {batch_size!r}")
    if not (isinstance(warmup, int) and not isinstance(warmup, bool) and warmup >= 0):
        raise UsageError(f"warm-up rounds must be an integer >= 0, got {warmup!r}")
    if iters is not None and seconds is not None:
        raise UsageError("give the number of rounds (--iters) or a time (--seconds), not both")
    if iters is not None and not positive_int(iters):
        raise UsageError(f"--iters must be a positive integer, got {iters!r}")
    if seconds is not None and not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise UsageError(f"--seconds must be a positive number, got {seconds!r}")
    if threads is not None and not positive_int(threads):
        raise UsageError(f"--threads must be a positive integer, got {threads!r}")



def _machine(device: str) -> dict[str, Any]:
    """The CPU (model, cores, extensions), Python and, on CUDA, the GPU and its compute capability."""
    from rkd.environment import cpu_description, device_description

    facts = {k: v for k, v in device_description(device).items() if k != "torch_threads"}
    return cpu_description() | facts


def _open_all(chosen: list[BundleRuntime], manifest: Mapping[str, Any], settings: dict[str, Any], *, device: str,
              options: Mapping[str, Mapping[str, Any]], asked: set[str]) -> tuple[dict[str, RuntimeResult],
                                                                                 dict[str, Any]]:
    """A :class:`RuntimeResult` (skipped until measured) for every chosen runtime, and the opened runtimes. A
    runtime whose backend is missing is skipped with the reason, unless it was ``asked`` for by name."""
    results: dict[str, RuntimeResult] = {}
    opened: dict[str, Any] = {}
    for rt in chosen:
        file = rt.file.name if rt.file is not None and rt.backend != "torch" else (
            str(rt.file) if rt.file is not None else None)
        result = RuntimeResult(rt.name, rt.backend, file, rt.sha256, "skipped", **settings)
        results[rt.name] = result
        if rt.skip is not None:
            result.reason = str(rt.skip)
            continue
        try:
            runtime = _open(rt, manifest, device=device, batch_size=settings["batch_size"],
                            threads=settings["threads"], options=options)
        except MissingDependencyError as exc:
            if rt.name in asked:
                raise
            result.reason = str(exc)
            continue
        opened[rt.name] = runtime
        result.device = _runtime_device(runtime)
        info = runtime.describe()
        result.details = {k: v for k, v in info.items() if k not in ("file", "sha256", "model")}
        if rt.backend == "tensorrt":
            result.sha256 = info.get("sha256", rt.sha256)
    return results, opened


def _compare(results: dict[str, RuntimeResult], timings: Mapping[str, Timing], rounds: int) -> str | None:
    """Summarise the ``timings`` into ``results`` and set every measured runtime's ratios to :data:`BASELINE`;
    return the baseline's name, or None when it did not run."""
    for name, timing in timings.items():
        result = results[name]
        result.status, result.rounds = "measured", rounds
        result.latency_ms, result.throughput = summarize(timing)
    base = results.get(BASELINE)
    if base is None or not base.measured:
        return None
    for result in results.values():
        if result.measured:
            result.vs_baseline = {
                "latency_speedup": base.latency_ms["p50"] / result.latency_ms["p50"],
                "throughput_ratio": result.throughput["median"] / base.throughput["median"],
            }
    return BASELINE


def _report(manifest: Mapping[str, Any], bundle_dir: Path, results: dict[str, RuntimeResult], baseline: str | None,
            started: float, **settings: Any) -> BenchReport:
    """The :class:`BenchReport` of a finished measurement, with the machine, versions and elapsed time."""
    from rkd.deploy.bundle import utc_now
    from rkd.environment import package_versions

    model = manifest.get("model") if isinstance(manifest.get("model"), Mapping) else {}
    return BenchReport(bundle=str(bundle_dir), model=model.get("name"), baseline=baseline, runtimes=results,
                       machine=_machine(settings["device"]), versions=package_versions(), created=utc_now(),
                       elapsed_s=time.perf_counter() - started, **settings)


def bench_bundle(
    path: str | Path,
    *,
    batch_size: int = 64,
    warmup: int = 3,
    iters: int | None = None,
    seconds: float | None = None,
    threads: int | None = None,
    runtimes: Sequence[str] | None = None,
    device: str = "cpu",
    checkpoint: str | Path | None = None,
    seed: int = 0,
    runtime_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> BenchReport:
    """Measure every runtime of the bundle at ``path`` that can run here (see the module docstring).

    Args:
        path: the bundle folder (``manifest.json`` and its files; every sha256 is checked first).
        batch_size: images per call of the throughput measurement.
        warmup: untimed rounds before the timed ones.
        iters: timed rounds (default :data:`DEFAULT_ITERS`); or ``seconds``: rounds until that much time passed.
        threads: CPU threads of torch and ONNX Runtime (default: torch's current number).
        runtimes: names from :data:`RUNTIME_NAMES` (default: every one the bundle has); the baseline
            ``onnx-fp32`` is measured in any case. A named runtime that cannot run here is an error, not a skip.
        device: ``cpu`` or ``cuda[:N]``, for torch and ONNX Runtime (its CUDA provider); TensorRT engines run
            on the GPU.
        checkpoint: the float checkpoint for ``torch`` (default: the source the manifest records); it must have
            the recorded sha256.
        seed: seeds the random input images.
        runtime_options: extra constructor arguments per backend (``torch``, ``onnxruntime``, ``tensorrt``), e.g.
            ``{"tensorrt": {"trt": fake_module, "device": "cpu"}}`` in tests.

    Raises:
        CheckpointError: not a bundle, or a file that does not match the manifest (exit 2).
        UsageError: bad settings, an unknown runtime name or one the bundle lacks (exit 2).
        MissingDependencyError: a named runtime's backend, or the CUDA device, is missing (exit 3).
    """
    import torch

    from rkd.config import resolve_device
    from rkd.deploy.bundle import read_manifest

    _check_settings(batch_size, warmup, iters, seconds, threads)
    if runtimes is not None:
        runtimes = list(dict.fromkeys(runtimes))
    bundle_dir = Path(path)
    if bundle_dir.is_file():
        raise UsageError(f"'{bundle_dir}' is a file; give the bundle folder (the one holding manifest.json)")
    device = resolve_device(device)
    manifest = read_manifest(bundle_dir, verify=True)  # every file's sha256 checked
    shape = _input_shape(manifest, bundle_dir)
    options = dict(runtime_options or {})
    offered = bundle_runtimes(bundle_dir, manifest, checkpoint=checkpoint,
                              check_tensorrt="trt" not in (options.get("tensorrt") or {}))
    chosen = _select(offered, runtimes, bundle_dir)
    asked = set(runtimes or ())

    saved_threads = torch.get_num_threads()
    threads = saved_threads if threads is None else threads
    gen = torch.Generator().manual_seed(seed)
    xb = torch.rand((batch_size, *shape), generator=gen)
    x1 = torch.rand((1, *shape), generator=gen)
    started = time.perf_counter()
    settings = {"threads": threads, "batch_size": batch_size, "input_shape": shape}
    torch.set_num_threads(threads)
    try:
        results, opened = _open_all(chosen, manifest, settings, device=device, options=options, asked=asked)
        if not opened:
            reasons = "; ".join(f"{r.name}: {r.reason}" for r in results.values())
            raise MissingDependencyError(f"no runtime of bundle '{bundle_dir}' can run here ({reasons})")
        calls = {name: _calls(runtime, x1, xb) for name, runtime in opened.items()}
        timings, rounds = measure(calls, batch_size=batch_size, warmup=warmup, iters=iters, seconds=seconds)
    finally:
        torch.set_num_threads(saved_threads)
    baseline = _compare(results, timings, rounds)
    return _report(manifest, bundle_dir, results, baseline, started, input_shape=shape, batch_size=batch_size,
                   warmup=warmup, rounds=rounds, seconds=seconds, threads=threads, device=device, seed=seed)
