"""Float Classifier -> one-file ONNX (input ``input`` in [0, 1] NCHW, output ``logits``, dynamic batch), and
its parity with torch measured in ONNX Runtime."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rkd.atomic import atomic_write
from rkd.attacks.predictions import logit_agreement
from rkd.errors import MissingDependencyError, UsageError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MIN_OPSET = 17


def max_opset() -> int:
    """The highest opset torch's legacy (TorchScript-based) ONNX exporter writes (20 in torch 2.14)."""
    try:
        from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET

        return int(ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    except ImportError:  # private constant moved: the value of torch 2.9-2.14
        return 20


def _size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if h < 1 or w < 1:
        raise UsageError(f"image size must be positive, got {image_size!r}")
    return int(h), int(w)


def export_onnx(
    model: nn.Module, path: str | Path, *, opset: int = 17, image_size: int | tuple[int, int] = 32
) -> Path:
    """Export ``model`` (a float Classifier, normalisation inside) to the single ONNX file ``path``.

    Uses ``torch.onnx.export(..., dynamo=False)``: the legacy TorchScript-based exporter. The dynamo exporter
    (torch's default since 2.9) needs ``onnxscript``, and only the legacy one maps
    ``fake_quantize_per_{tensor,channel}_affine`` to QuantizeLinear/DequantizeLinear, which the INT8 surrogate
    export relies on; its deprecation warning is silenced here on purpose. The graph takes ``input`` (float32
    NCHW in [0, 1], dynamic batch ``batch``) and returns ``logits``; the model is exported in eval mode with
    constant folding, weights inside the file. The file is written to a temp path, checked with
    ``onnx.checker.check_model(full_check=True)`` and only then moved into place; the model's train/eval mode
    is restored afterwards.

    Args:
        model: the module to export (any device; a CPU copy of its input is traced on its own device).
        path: the ``.onnx`` file to write.
        opset: ONNX opset, 17 up to :func:`max_opset`.
        image_size: side (or ``(H, W)``) of the example input; the batch axis stays dynamic.

    Returns:
        ``path``.

    Raises:
        UsageError: an opset out of range, an export failure, or a graph the ONNX checker rejects (naming the
            file). MissingDependencyError: onnx is not installed.
    """
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError("ONNX export needs the onnx package: pip install onnx") from None

    path = Path(path)
    top = max_opset()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= top:
        raise UsageError(
            f"opset must be an integer from {MIN_OPSET} to {top} (torch's legacy exporter), got {opset!r}"
        )
    h, w = _size(image_size)
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    example = torch.rand(2, 3, h, w, device=device)
    was_training = model.training

    def write(tmp: Path) -> None:
        model.eval()
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
                torch.onnx.export(
                    model, (example,), str(tmp), dynamo=False, external_data=False, export_params=True,
                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    opset_version=opset, do_constant_folding=True,
                )
        except UsageError:
            raise
        except Exception as exc:  # the exporter raises many types (SymbolicValueError, RuntimeError, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"ONNX export of {type(model).__name__} to '{path}' failed: {first}") from None
        finally:
            model.train(was_training)
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"ONNX checker rejected '{path}': {first}") from None

    return atomic_write(path, write)


@torch.no_grad()
def compare_onnx(
    model: nn.Module, onnx_path: str | Path, x: torch.Tensor, *, batch_size: int = 256
) -> dict[str, Any]:
    """Logit parity of ``model`` (torch, eval mode) and its ONNX file (ONNX Runtime, CPU) on images ``x``.

    ONNX Runtime runs through :class:`rkd.deploy.runtimes.OnnxRuntime` (an ``onnxruntime.InferenceSession``
    with ``providers=["CPUExecutionProvider"]``); torch runs on the model's device, in eval mode (the model's
    mode is restored afterwards).

    Args:
        model: the float model the file was exported from.
        onnx_path: the exported file.
        x: float32 NCHW images in [0, 1].
        batch_size: images per run of either runtime.

    Returns:
        ``{"n", "max_abs_diff", "mean_abs_diff", "max_abs_logit", "top1_agreement", "top1_disagreements",
        "runtime": "onnxruntime CPUExecutionProvider"}``.
    """
    from rkd.deploy.runtimes import OnnxRuntime, TorchRuntime

    if x.ndim != 4 or len(x) == 0:
        raise UsageError(f"parity needs a non-empty NCHW batch, got shape {tuple(x.shape)}")
    was_training = model.training
    try:
        ref = TorchRuntime(model, batch_size=batch_size).predict(x).cpu()
    finally:
        model.train(was_training)
    got = OnnxRuntime(onnx_path, batch_size=batch_size).predict(x).cpu()
    return logit_agreement(ref, got) | {"max_abs_logit": float(ref.abs().max()),
                                        "runtime": "onnxruntime CPUExecutionProvider"}
