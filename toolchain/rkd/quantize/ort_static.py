"""ONNX Runtime static INT8 quantization in QDQ format, and per-layer error for debugging it.

:func:`quantize_onnx` runs ``onnxruntime.quantization.shape_inference.quant_pre_process`` (shape inference
and ONNX Runtime's basic graph optimisations; without it the quantizer warns about non-initializer biases) and
then ``onnxruntime.quantization.quantize_static(..., quant_format=QuantFormat.QDQ, per_channel=True)``. Two
schemes:

- ``trt``: ``QuantType.QInt8`` activations and weights, ``extra_options={"ActivationSymmetric": True,
  "WeightSymmetric": True}``, per-channel weights: what TensorRT's explicit quantization takes (symmetric
  only).
- ``cpu``: ``QuantType.QUInt8`` asymmetric activations, symmetric ``QInt8`` per-channel weights: the form
  ONNX Runtime's x86 kernels run fast (symmetric int8 activations ran slower than FP32 on the 2-core dev CPU).

Calibration ``entropy`` (KL-divergence threshold search, as TensorRT's entropy calibrator) collects histograms
with ONNX Runtime's own ``calibrate.create_calibrator(..., CalibrationMethod.Entropy, extra_options={"num_bins":
2048, "num_quantized_bins": 128})``, searches their thresholds with :mod:`rkd.quantize.kl_threshold` (ONNX
Runtime's search, same results, several times faster) and hands the ranges to ``quantize_static`` as
``TensorQuantOverrides`` (``rmin``, ``rmax`` per tensor): ``quantize_static`` cannot set the histogram sizes, and
its defaults (128 bins, 128 quantized bins) leave the full observed range as the only candidate threshold, i.e.
exactly MinMax (byte-identical files).

The classifier's logits (the graph output) stay float by default (``OpTypesToExcludeOutputQuantization`` for
the output's producer, when that op type occurs once): nothing downstream consumes them as INT8, and 8-bit
logits tie near decision boundaries. :func:`debug_layers` compares every activation of the float and QDQ
models with ``onnxruntime.quantization.qdq_loss_debug`` (``modify_model_output_intermediate_tensors``,
``collect_activations``, ``create_activation_matching``, ``compute_activation_error``).
"""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rkd.atomic import atomic_write
from rkd.errors import UsageError
from rkd.quantize.calibration import ImageCalibrationReader
from rkd.quantize.kl_threshold import entropy_thresholds
from rkd.registry import did_you_mean

SCHEMES: tuple[str, ...] = ("trt", "cpu")
METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")
#: Histogram bins and quantized bins of the entropy calibration (TensorRT's entropy calibrator uses 2048 / 128).
ENTROPY_BINS = 2048
ENTROPY_QUANTIZED_BINS = 128
_CALIB_BATCH = 32

log = logging.getLogger(__name__)


def _choice(kind: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise UsageError(
            f"unknown {kind} '{value}'{did_you_mean(str(value), choices)}; choose {', '.join(choices)}"
        )
    return value


def _model_input(model: Any, path: Path) -> tuple[str, tuple[int, int, int] | None]:
    """The graph's single input name and its (C, H, W) when the file fixes them."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise UsageError(f"'{path}' has {len(inputs)} inputs; rkd quantizes single-input classifiers")
    dims = inputs[0].type.tensor_type.shape.dim
    chw = tuple(int(d.dim_value) for d in dims[1:]) if len(dims) == 4 else ()
    fixed = len(chw) == 3 and all(d > 0 for d in chw)
    return inputs[0].name, (chw if fixed else None)  # type: ignore[return-value]


def _output_producer_op(model: Any) -> str | None:
    """The op type producing the graph's (first) output, if that op type occurs only once in the graph."""
    out = model.graph.output[0].name
    producers = [n.op_type for n in model.graph.node if out in n.output]
    if not producers:
        return None
    op = producers[0]
    return op if sum(n.op_type == op for n in model.graph.node) == 1 else None


def scheme_options(scheme: str) -> dict[str, Any]:
    """The ``quantize_static`` arguments of a scheme (``activation_type``, ``weight_type``, symmetry)."""
    from onnxruntime.quantization import QuantType

    if _choice("quantization scheme", scheme, SCHEMES) == "trt":
        return {"activation_type": QuantType.QInt8, "weight_type": QuantType.QInt8,
                "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True}}
    return {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8,
            "extra_options": {"ActivationSymmetric": False, "WeightSymmetric": True}}


def _pre_process(float_onnx: Path, pre: Path, exclude: list[str], names: list[str]) -> Any:
    """``quant_pre_process`` ``float_onnx`` into ``pre`` and return it loaded; a node to exclude that the
    pre-processed graph lacks is a UsageError naming the closest one."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(float_onnx), str(pre))
    except Exception as exc:  # onnxruntime raises many types
        raise UsageError(f"quant_pre_process failed on '{float_onnx}': {_first_line(exc)}") from None
    pre_model = onnx.load(str(pre))
    pre_names = {n.name for n in pre_model.graph.node}
    unknown = [n for n in exclude if n not in pre_names]
    if unknown:
        known = sorted(pre_names | set(names))
        raise UsageError(
            f"cannot exclude node '{unknown[0]}': no such node{did_you_mean(unknown[0], known)} "
            "(names as listed by --debug-layers)"
        )
    return pre_model


def _quantize_static(pre: Path, out: Path, reader: Any, *, float_onnx: Path, **settings: Any) -> None:
    """``quantize_static`` (QDQ, per-channel, no reduced range) of ``pre`` into ``out`` with ``settings``, then
    ``onnx.checker.check_model``; any failure is a one-line UsageError."""
    import onnx
    import onnxruntime.quantization as oq

    try:
        oq.quantize_static(str(pre), str(out), reader, quant_format=oq.QuantFormat.QDQ, per_channel=True,
                           reduce_range=False, **settings)
    except UsageError:
        raise
    except Exception as exc:
        first = _first_line(exc)
        raise UsageError(f"ONNX Runtime quantize_static failed on '{float_onnx}': {first}") from None
    try:
        onnx.checker.check_model(str(out), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise UsageError(f"ONNX checker rejected the quantized model: {_first_line(exc)}") from None


def _settings(scheme: str, method: str, images: int, exclude: list[str], extra: dict[str, Any], *,
              entropy_overridden: int, logits_float: bool) -> dict[str, Any]:
    """The settings a quantization used, JSON-ready, for the bundle manifest."""
    return {
        "format": "QDQ",
        "scheme": scheme,
        "activation_type": "int8" if scheme == "trt" else "uint8",
        "weight_type": "int8",
        "activation_symmetric": scheme == "trt",
        "weight_symmetric": True,
        "per_channel_weights": True,
        "reduce_range": False,
        "calibration_method": method,
        "calibration_images": int(images),
        **({"entropy": {"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS,
                        "ranges_overridden": entropy_overridden}} if method == "entropy" else {}),
        "nodes_to_exclude": exclude,
        "logits": "float" if logits_float else "int8",
        "preprocess": "onnxruntime.quantization.shape_inference.quant_pre_process",
        "quantizer": "onnxruntime.quantization.quantize_static",
        "extra_options": {k: v for k, v in extra.items()},
        "onnxruntime": _version("onnxruntime"),
    }


def quantize_onnx(
    float_onnx: str | Path,
    int8_onnx: str | Path,
    calib: np.ndarray,
    *,
    scheme: str,
    method: str = "minmax",
    nodes_to_exclude: Sequence[str] | None = None,
    quantize_output: bool = False,
) -> dict[str, Any]:
    """Quantize a float ONNX classifier to an INT8 QDQ file calibrated on ``calib``.

    Runs ``quant_pre_process`` then ``quantize_static`` (``QuantFormat.QDQ``, ``per_channel=True``,
    ``CalibrationMethod.MinMax|Entropy|Percentile``) in a temp directory, checks the result with
    ``onnx.checker.check_model`` and moves it to ``int8_onnx`` atomically.

    Args:
        float_onnx: the float model (input float32 NCHW in [0, 1]).
        int8_onnx: the QDQ file to write.
        calib: real images, float32 NCHW in [0, 1] (hundreds; never random data).
        scheme: ``"trt"`` (symmetric int8 activations and weights) or ``"cpu"`` (asymmetric uint8
            activations, int8 weights).
        method: calibration: ``"minmax"``, ``"entropy"`` or ``"percentile"`` (99.999th).
        nodes_to_exclude: node names to leave in float (see :func:`debug_layers`).
        quantize_output: also quantize the logits (ONNX Runtime's default); off keeps them float.

    Returns:
        The settings used, JSON-ready, for the bundle manifest.

    Raises:
        UsageError: unknown scheme/method, bad calibration images (shape, range), unknown excluded nodes, or a
            quantizer/checker failure (one line).
    """
    import onnx
    import onnxruntime.quantization as oq

    scheme = _choice("quantization scheme", scheme, SCHEMES)
    method = _choice("calibration method", method, METHODS)
    float_onnx, int8_onnx = Path(float_onnx), Path(int8_onnx)
    if not float_onnx.is_file():
        raise UsageError(f"ONNX file not found: '{float_onnx}'")
    model = onnx.load(str(float_onnx))
    input_name, chw = _model_input(model, float_onnx)
    reader = ImageCalibrationReader(calib, input_name, batch_size=_CALIB_BATCH, expected_chw=chw)
    exclude = list(nodes_to_exclude or [])
    names = [n.name for n in model.graph.node]
    options = scheme_options(scheme)
    calibrate_method = {"minmax": oq.CalibrationMethod.MinMax, "entropy": oq.CalibrationMethod.Entropy,
                        "percentile": oq.CalibrationMethod.Percentile}[method]
    extra: dict[str, Any] = dict(options["extra_options"])
    extra["CalibTensorRangeSymmetric"] = scheme == "trt"  # percentile's calibrator defaults to symmetric

    with tempfile.TemporaryDirectory(prefix="rkd-quantize-") as tmp:
        pre, out = Path(tmp) / "model.pre.onnx", Path(tmp) / "model.int8.onnx"
        pre_model = _pre_process(float_onnx, pre, exclude, names)
        producer = None if quantize_output else _output_producer_op(pre_model)
        if producer is not None:
            extra["OpTypesToExcludeOutputQuantization"] = [producer]
        overrides: dict[str, list[dict[str, Any]]] = {}
        if method == "entropy":
            ranges = entropy_ranges(pre, calib, input_name, expected_chw=chw, symmetric=scheme == "trt",
                                    workdir=Path(tmp))
            overrides = {name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
                         for name, (lo, hi) in ranges.items()}
            calibrate_method = oq.CalibrationMethod.MinMax  # its ranges are all overridden
        _quantize_static(pre, out, reader, float_onnx=float_onnx, calibrate_method=calibrate_method,
                         nodes_to_exclude=exclude, activation_type=options["activation_type"],
                         weight_type=options["weight_type"],
                         extra_options=extra | ({"TensorQuantOverrides": overrides} if overrides else {}))
        atomic_write(int8_onnx, lambda dst: shutil.copyfile(out, dst))

    return _settings(scheme, method, len(reader.images), exclude, extra, entropy_overridden=len(overrides),
                     logits_float=producer is not None)


def entropy_ranges(
    model_path: str | Path,
    calib: np.ndarray,
    input_name: str,
    *,
    expected_chw: Sequence[int] | None = None,
    symmetric: bool = False,
    workdir: str | Path,
) -> dict[str, tuple[float, float]]:
    """Each activation's (rmin, rmax) by ONNX Runtime's entropy calibrator (KL threshold search on a histogram of
    :data:`ENTROPY_BINS` bins quantized to :data:`ENTROPY_QUANTIZED_BINS`; the threshold is clipped to the observed
    min/max, so a ReLU output keeps rmin 0). ONNX Runtime collects the histograms; the search is
    :func:`rkd.quantize.kl_threshold.entropy_thresholds` (ONNX Runtime's, same results, faster).

    Args:
        model_path: the pre-processed float ONNX file.
        calib: calibration images, float32 NCHW in [0, 1].
        input_name: the model's input.
        expected_chw: the model's (C, H, W) for the image check.
        symmetric: symmetric ranges (the ``trt`` scheme).
        workdir: where ONNX Runtime writes its augmented model.
    """
    import contextlib
    import io

    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    calibrator = create_calibrator(
        Path(model_path), [], augmented_model_path=str(Path(workdir) / "entropy.augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS, "symmetric": symmetric},
    )
    reader = ImageCalibrationReader(calib, input_name, batch_size=_CALIB_BATCH, expected_chw=expected_chw)
    with contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints progress lines
        calibrator.collect_data(reader)
    # calibrator.compute_data() would search the same thresholds, several times slower (see kl_threshold)
    return entropy_thresholds(calibrator.collector.histogram_dict, ENTROPY_QUANTIZED_BINS)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def debug_layers(
    float_onnx: str | Path, int8_onnx: str | Path, x: np.ndarray, *, batch_size: int = 32
) -> list[dict[str, Any]]:
    """Per-activation error of the QDQ model against the float model on images ``x``, worst first.

    Uses ``onnxruntime.quantization.qdq_loss_debug``: both models are augmented to output every activation
    (``modify_model_output_intermediate_tensors``), run on ``x`` (``collect_activations``, graph optimisation
    off), matched by tensor name (``create_activation_matching``) and compared by signal-to-quantization-noise
    ratio (``compute_activation_error``). The float model is pre-processed with ``quant_pre_process`` first,
    as :func:`quantize_onnx` does, so its tensor names match the QDQ file's.

    Args:
        float_onnx: the float model the QDQ file was quantized from.
        int8_onnx: the QDQ model.
        x: float32 NCHW images in [0, 1] (a few dozen: every activation of every image is held in memory).
        batch_size: images per session run.

    Returns:
        One dict per matched activation, sorted by ``sqnr_db`` ascending (worst first): ``tensor``, ``node``
        and ``op_type`` (its producer in the float graph: the name ``nodes_to_exclude`` takes), ``sqnr_db``
        (float activation vs the QDQ model's dequantized one, accumulated error) and ``qdq_sqnr_db`` (the
        QDQ model's own activation before vs after its Q/DQ pair: this layer's rounding alone).
    """
    import onnx
    import onnxruntime
    import torch
    from onnxruntime.quantization import qdq_loss_debug as dbg
    from onnxruntime.quantization.shape_inference import quant_pre_process

    float_onnx, int8_onnx = Path(float_onnx), Path(int8_onnx)
    for path in (float_onnx, int8_onnx):
        if not path.is_file():
            raise UsageError(f"ONNX file not found: '{path}'")
    model = onnx.load(str(float_onnx))
    input_name, chw = _model_input(model, float_onnx)
    reader = ImageCalibrationReader(x, input_name, batch_size=batch_size, expected_chw=chw)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="rkd-qdq-debug-") as tmp:
        pre = Path(tmp) / "float.pre.onnx"
        aug_f, aug_q = Path(tmp) / "float.aug.onnx", Path(tmp) / "int8.aug.onnx"
        quant_pre_process(str(float_onnx), str(pre))
        producers = {out: (n.name, n.op_type) for n in onnx.load(str(pre)).graph.node for out in n.output}
        dbg.modify_model_output_intermediate_tensors(str(pre), str(aug_f))
        dbg.modify_model_output_intermediate_tensors(str(int8_onnx), str(aug_q))
        float_acts = dbg.collect_activations(str(aug_f), reader, session_options=options)
        reader.rewind()
        qdq_acts = dbg.collect_activations(str(aug_q), reader, session_options=options)
    matched = dbg.create_activation_matching(qdq_acts, float_acts)
    matched = {name: m for name, m in matched.items() if m.get("float") is not None}
    errors = dbg.compute_activation_error(matched)
    rows = []
    for name, err in errors.items():
        node, op = producers.get(name, ("", ""))
        rows.append({"tensor": name, "node": node, "op_type": op,
                     "sqnr_db": round(float(err["xmodel_err"]), 3),
                     "qdq_sqnr_db": round(float(err["qdq_err"]), 3)})
    rows.sort(key=lambda r: r["sqnr_db"])
    return rows
