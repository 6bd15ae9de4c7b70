"""The pieces every ONNX operator function of the gradient interpreter shares (:mod:`rkd.quantize.onnx_ops`
for the float operators, :mod:`rkd.quantize.onnx_qops` for the quantized ones, :mod:`rkd.quantize.qdq_integer`
for the integer kernels): the operator function type, explicit padding, the convolution core of Conv,
QLinearConv and ConvInteger, and per-axis broadcasting of quantization parameters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from rkd.errors import UsageError

#: An operator: ``fn(inputs, attrs)`` -> one tensor, or a tuple for several outputs.
Op = Callable[[list[Any], dict[str, Any]], Any]


def _pads(pads: Sequence[int] | None, n: int) -> tuple[list[int], list[int]]:
    pads = list(pads or [0] * (2 * n))
    return pads[:n], pads[n:]


def _pad_input(x: torch.Tensor, begin: list[int], end: list[int], value: float = 0.0) -> torch.Tensor:
    spec: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        spec += [b, e]
    return F.pad(x, spec, value=value)


def _no_auto_pad(attrs: dict[str, Any], op: str) -> None:
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise UsageError(f"surrogate: {op} with auto_pad={attrs['auto_pad']} is not supported; export with "
                         "explicit pads")


def _no_channels_last(attrs: dict[str, Any], op: str) -> None:
    if attrs.get("channels_last", 0):
        raise UsageError(f"surrogate: {op} with channels_last=1 is not supported")


def _conv_core(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, a: dict[str, Any], op: str = "Conv"
               ) -> torch.Tensor:
    _no_auto_pad(a, op)
    n = w.dim() - 2
    begin, end = _pads(a.get("pads"), n)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    stride, dilation = a.get("strides", [1] * n), a.get("dilations", [1] * n)
    if begin != end:
        x, begin = _pad_input(x, begin, end), [0] * n
    return fn(x, w, b, stride=stride, padding=begin, dilation=dilation, groups=a.get("group", 1))


def _broadcast(param: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """``param`` (a scalar or a 1-D per-axis tensor) shaped to broadcast against ``x`` along ``axis``."""
    if param.numel() == 1:
        return param.reshape(())
    axis = axis + x.dim() if axis < 0 else axis
    shape = [1] * x.dim()
    shape[axis] = -1
    return param.reshape(shape)


def _opt(inp: list[Any], i: int) -> Any:
    return inp[i] if len(inp) > i else None
