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
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rkd.errors import CheckpointError, MissingDependencyError, RkdError, UsageError

FORMAT = "rkd-bench"
FORMAT_VERSION = 1
BASELINE = "onnx-fp32"
#: The ONNX files of a bundle that ``rkd bench`` runs in ONNX Runtime, by runtime name.
ONNX_FILES: dict[str, str] = {
    "onnx-fp32": "model.onnx", "onnx-int8": "model.int8.onnx", "onnx-int8-ptq": "model.int8.ptq.onnx",
}
TENSORRT_PRECISIONS: tuple[str, ...] = ("int8", "fp16", "fp32")
#: Every runtime name a bundle can have (engines of several GPUs with one precision get ``-<gpu slug>`` added).
RUNTIME_NAMES: tuple[str, ...] = ("torch", *ONNX_FILES, *(f"trt-{p}" for p in TENSORRT_PRECISIONS))
#: ONNX Runtime session settings of every bench session: idle intra-op threads sleep instead of spinning, so they
#: do not take the CPU from the runtime timed next (measured here: torch's batch-1 call right after an ONNX Runtime
#: call took ~40 ms instead of ~0.1 ms with spinning on; ONNX Runtime alone is as fast either way).
ORT_SESSION_CONFIG: dict[str, str] = {"session.intra_op.allow_spinning": "0"}
MIN_ROUNDS = 3  # with ``seconds``: at least this many timed rounds, so p90 means something
DEFAULT_ITERS = 30


# -- results -------------------------------------------------------------------------------------------------


@dataclass
class Timing:
    """The raw samples of one runtime: batch-1 latencies (ms) and batch throughputs (images/s), one per round."""

    latency_ms: list[float] = field(default_factory=list)
    throughput: list[float] = field(default_factory=list)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linear between the closest ranks (NumPy's default method)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


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


# -- timing --------------------------------------------------------------------------------------------------

Call = Callable[[], object]


def measure(
    calls: Mapping[str, tuple[Call, Call]],
    *,
    batch_size: int,
    warmup: int = 3,
    iters: int | None = None,
    seconds: float | None = None,
    rewarm: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[dict[str, Timing], int]:
    """Time ``calls`` (name -> (one-image call, ``batch_size``-image call)) interleaved, round by round.

    ``warmup`` untimed rounds, then ``iters`` timed rounds, or with ``seconds`` as many rounds as fit in that
    time (at least :data:`MIN_ROUNDS`). In each round every name makes its batch-1 call then its batch call, both
    timed, after one untimed batch-1 call with ``rewarm`` (so the first call after another runtime's does not
    carry the switch: caches, sleeping threads); the order of the names rotates by one each round.

    Returns:
        ``({name: Timing}, rounds)``.
    """
    names = list(calls)
    rounds = DEFAULT_ITERS if iters is None and seconds is None else iters
    timings = {name: Timing() for name in names}
    for _ in range(warmup):
        for name in names:
            calls[name][0]()
            calls[name][1]()
    start, done = clock(), 0
    while True:
        if rounds is not None and done >= rounds:
            break
        if rounds is None and done >= MIN_ROUNDS and clock() - start >= float(seconds or 0):
            break
        for i in range(len(names)):
            name = names[(done + i) % len(names)]
            one, batch = calls[name]
            if rewarm:
                one()
            t0 = clock()
            one()
            t1 = clock()
            batch()
            t2 = clock()
            timings[name].latency_ms.append(max(t1 - t0, 1e-9) * 1e3)
            timings[name].throughput.append(batch_size / max(t2 - t1, 1e-9))
        done += 1
    return timings, done


def summarize(timing: Timing) -> tuple[dict[str, float], dict[str, float]]:
    """Latency ``{p50, p90, mean, min, max}`` (ms) and throughput ``{median, min, max}`` (images/s)."""
    lat, thr = timing.latency_ms, timing.throughput
    return (
        {"p50": percentile(lat, 0.5), "p90": percentile(lat, 0.9), "mean": statistics.fmean(lat),
         "min": min(lat), "max": max(lat)},
        {"median": statistics.median(thr), "min": min(thr), "max": max(thr)},
    )


# -- the runtimes of a bundle --------------------------------------------------------------------------------


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


# -- opening and running -------------------------------------------------------------------------------------


def _open(rt: BundleRuntime, manifest: Mapping[str, Any], *, device: str, batch_size: int, threads: int,
          options: Mapping[str, Mapping[str, Any]]) -> Any:
    """The opened ``Runtime`` of one bundle runtime (``rkd.deploy.runtimes.open_runtime``)."""
    from rkd.deploy.runtimes import open_runtime

    extra = dict(options.get(rt.backend) or {})
    if rt.backend == "torch":
        return open_runtime(rt.file, device=extra.pop("device", device), batch_size=batch_size, **extra)
    if rt.backend == "onnxruntime":
        config = {**ORT_SESSION_CONFIG, **dict(extra.pop("session_config", None) or {})}
        return open_runtime(rt.file, device=extra.pop("device", device), batch_size=batch_size, threads=threads,
                            session_config=config, **extra)
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


def _machine(device: str) -> dict[str, Any]:
    """The CPU (model, cores, extensions), Python and, on CUDA, the GPU and its compute capability."""
    from rkd.environment import cpu_description, device_description

    facts = {k: v for k, v in device_description(device).items() if k != "torch_threads"}
    return cpu_description() | facts


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
    from rkd.deploy.bundle import read_manifest, utc_now
    from rkd.environment import package_versions

    _check_settings(batch_size, warmup, iters, seconds, threads)
    if runtimes is not None:
        runtimes = list(dict.fromkeys(runtimes))
    bundle_dir = Path(path)
    if bundle_dir.is_file():
        raise UsageError(f"'{bundle_dir}' is a file; give the bundle folder (the one holding manifest.json)")
    device = resolve_device(device)
    manifest = read_manifest(bundle_dir, verify=True)
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
    results: dict[str, RuntimeResult] = {}
    opened: dict[str, Any] = {}
    torch.set_num_threads(threads)
    try:
        for rt in chosen:
            file = rt.file.name if rt.file is not None and rt.backend != "torch" else (
                str(rt.file) if rt.file is not None else None)
            result = RuntimeResult(rt.name, rt.backend, file, rt.sha256, "skipped", threads=threads,
                                   batch_size=batch_size, input_shape=shape)
            results[rt.name] = result
            if rt.skip is not None:
                result.reason = str(rt.skip)
                continue
            try:
                runtime = _open(rt, manifest, device=device, batch_size=batch_size, threads=threads,
                                options=options)
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
        if not opened:
            reasons = "; ".join(f"{r.name}: {r.reason}" for r in results.values())
            raise MissingDependencyError(f"no runtime of bundle '{bundle_dir}' can run here ({reasons})")
        calls = {name: _calls(runtime, x1, xb) for name, runtime in opened.items()}
        timings, rounds = measure(calls, batch_size=batch_size, warmup=warmup, iters=iters, seconds=seconds)
    finally:
        torch.set_num_threads(saved_threads)
    for name, timing in timings.items():
        result = results[name]
        result.status, result.rounds = "measured", rounds
        result.latency_ms, result.throughput = summarize(timing)
    base = results.get(BASELINE)
    baseline = BASELINE if base is not None and base.measured else None
    if base is not None and base.measured:
        for result in results.values():
            if result.measured:
                result.vs_baseline = {
                    "latency_speedup": base.latency_ms["p50"] / result.latency_ms["p50"],
                    "throughput_ratio": result.throughput["median"] / base.throughput["median"],
                }
    model = manifest.get("model") if isinstance(manifest.get("model"), Mapping) else {}
    return BenchReport(
        bundle=str(bundle_dir), model=model.get("name"), input_shape=shape, batch_size=batch_size, warmup=warmup,
        rounds=rounds, seconds=seconds, threads=threads, device=device, seed=seed, baseline=baseline,
        runtimes=results, machine=_machine(device), versions=package_versions(),
        created=utc_now(), elapsed_s=time.perf_counter() - started,
    )
