"""ONNX operators as differentiable torch functions: the operator registry of the gradient interpreter
(:class:`rkd.quantize.surrogate.OnnxGraphModule`) and the float operators. The quantized operators
(QuantizeLinear, DequantizeLinear, the integer and QOperator ops) are in :mod:`rkd.quantize.onnx_qops`, the
pieces both share (padding, the convolution core, per-axis broadcasting) in :mod:`rkd.quantize.onnx_common`;
this module registers them all and keeps their names importable.

Each operator is ``fn(inputs, attrs)``: ``inputs`` the node's input tensors in order (None for an omitted
optional input), ``attrs`` its attributes; it returns one tensor, or a tuple for several outputs. Standard
operators (domain ``ai.onnx``) follow the ONNX operator specification (onnx.ai/onnx/operators); the
``com.microsoft`` operators that ONNX Runtime's quantizer writes follow ONNX Runtime's contrib operator
specification (docs/ContribOperators.md of onnxruntime). :func:`supported_ops` lists them all; ``docs/generate.py``
writes ``docs/reference/onnx-ops.md`` from it.

Integer tensors. A quantized tensor (the output of ``QuantizeLinear`` of a float tensor, of a QOperator op such as
``QLinearConv``, of ``MatMulInteger``) travels as a float32 tensor holding the integer values (exact up to 2**24),
so that gradients flow through it; its integer type is the one of its zero point (int8: -128..127, uint8: 0..255).
Operators that only move values (MaxPool, Reshape, Flatten, Transpose, Pad) run on these as on any tensor;
``DequantizeLinear`` and the QOperator ops read them as integers.

QOperator ops (``QLinearConv``, ``QLinearMatMul``, ``QGemm``, ``QLinearAdd``, ...) dequantize their inputs, compute
the float op and requantize the result with the output's scale and zero point, as their specifications define;
``QLinearConv``, ``QLinearMatMul`` and ``QGemm`` accumulate ``(x - x_zero_point) * (w - w_zero_point)`` and
requantize with the float multiplier ``x_scale * w_scale / y_scale``, as ONNX Runtime's integer kernels do. A
fused activation (Relu, Clip) appears only as the output's range and is reproduced by the saturation.

Gradients (straight-through choices):

- rounding to the integer grid (``QuantizeLinear`` of a float tensor, every QOperator requantization,
  ``DynamicQuantizeLinear``) is the identity in the backward pass (straight-through estimator); the saturation to
  ``[qmin, qmax]`` keeps its true derivative, zero where the value saturates: the gradient
  ``torch.fake_quantize_per_tensor_affine`` gives in the QDQ path;
- ``Round``, ``Floor``, ``Ceil`` of a float tensor: the identity (BPDA, Athalye et al. 2018);
- ``DynamicQuantizeLinear``: the scale and zero point it computes from the batch are constants for the gradient;
- integer results (``Shape``, a ``Cast`` to an integer type, integer arithmetic) carry no gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from rkd.errors import UsageError
from rkd.quantize.onnx_common import Op, _broadcast, _conv_core, _no_auto_pad, _opt, _pad_input, _pads
from rkd.quantize.onnx_qops import (
    CENTRED_WEIGHTS,
    QRANGE,
    _conv_integer,
    _dequantize,
    _dynamic_quantize,
    _matmul_integer,
    _nchw,
    _qgemm,
    _qlinear_binary,
    _qlinear_concat,
    _qlinear_conv,
    _qlinear_matmul,
    _qlinear_unary,
    _qlinear_where,
    _quantize,
    centred_weight,
)

#: Names kept importable from here: the shared pieces (:mod:`rkd.quantize.onnx_common`, also used by
#: :mod:`rkd.quantize.qdq_integer`) and the quantized operators (:mod:`rkd.quantize.onnx_qops`).
__all__ = ["CENTRED_WEIGHTS", "MS_DOMAIN", "ONNX_DOMAIN", "ONNX_TO_TORCH", "OPS", "QRANGE", "Op",
           "OnnxOpInfo", "_broadcast", "_conv_core", "_dequantize", "_pad_input", "_pads", "centred_weight",
           "domain_name", "lookup", "supported_ops"]


#: The default ONNX domain and ONNX Runtime's contrib domain.
ONNX_DOMAIN = "ai.onnx"
MS_DOMAIN = "com.microsoft"


ONNX_TO_TORCH: dict[int, torch.dtype] = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 4: torch.uint16, 5: torch.int16, 6: torch.int32,
    7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16,
}


class OnnxOpInfo(NamedTuple):
    """One operator the interpreter runs: its ``op`` type, ``domain`` and how its ``gradient`` is taken."""

    op: str
    domain: str
    gradient: str


# ------------------------------------------------------------------------------------------ float ops
def _conv(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
    """ONNX Conv."""
    return _conv_core(inp[0], inp[1], _opt(inp, 2), a)


def _gemm(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
    """ONNX Gemm: ``alpha * A' B' + beta * C``."""
    x, w = inp[0], inp[1]
    x = x.t() if a.get("transA", 0) else x
    w = w.t() if a.get("transB", 0) else w
    y = x @ w
    if a.get("alpha", 1.0) != 1.0:
        y = y * a["alpha"]
    if len(inp) > 2 and inp[2] is not None:
        c = inp[2] if a.get("beta", 1.0) == 1.0 else inp[2] * a["beta"]
        y = y + c
    return y


def _pool(inp: list[Any], a: dict[str, Any], kind: str) -> torch.Tensor:
    """ONNX MaxPool / AveragePool (explicit symmetric pads)."""
    _no_auto_pad(a, kind)
    x = inp[0]
    kernel = a["kernel_shape"]
    n = len(kernel)
    begin, end = _pads(a.get("pads"), n)
    if begin != end:
        raise UsageError(f"surrogate: {kind} with asymmetric pads {a.get('pads')} is not supported")
    stride = a.get("strides", [1] * n)
    ceil = bool(a.get("ceil_mode", 0))
    if kind == "MaxPool":
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
        return fn(x, kernel, stride, begin, a.get("dilations", [1] * n), ceil_mode=ceil)
    if any(d != 1 for d in a.get("dilations", [1] * n)):
        raise UsageError("surrogate: AveragePool with dilations is not supported")
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
    return fn(x, kernel, stride, begin, ceil_mode=ceil, count_include_pad=bool(a.get("count_include_pad", 0)))


def _reshape(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
    """ONNX Reshape: 0 copies the input's dimension unless ``allowzero=1``; -1 is inferred."""
    x, shape = inp[0], [int(s) for s in inp[1].tolist()]
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _flatten(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
    """ONNX Flatten: 2-D, the dimensions before ``axis`` times the rest."""
    x, axis = inp[0], a.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    lead = math.prod(x.shape[:axis])
    return x.reshape(lead, -1)


def _axes(inp: list[Any], a: dict[str, Any]) -> list[int] | None:
    """Axes from the second input (opset 13/18+) or the ``axes`` attribute (older opsets)."""
    if len(inp) > 1 and inp[1] is not None:
        return [int(v) for v in inp[1].reshape(-1).tolist()]
    return a.get("axes")


def _unsqueeze(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = inp[0]
    axes = _axes(inp, a) or []
    rank = x.dim() + len(axes)
    for ax in sorted(ax + rank if ax < 0 else ax for ax in axes):
        x = x.unsqueeze(ax)
    return x


def _squeeze(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = inp[0]
    axes = _axes(inp, a)
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(ax + x.dim() if ax < 0 else ax for ax in axes))


def _gather(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
    data, idx = inp[0], inp[1].long()
    axis = a.get("axis", 0)
    axis = axis + data.dim() if axis < 0 else axis
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    out = torch.index_select(data, axis, idx.reshape(-1).to(data.device))
    # a scalar index drops the axis; one shape tuple, so that a 0-d result (a scalar index into a 1-D
    # tensor, as in Shape -> Gather of ``x.view(x.size(0), -1)``) reshapes too
    return out.reshape((*data.shape[:axis], *idx.shape, *data.shape[axis + 1:]))


def _clip(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
    """ONNX Clip: bounds from inputs (opset 11+) or attributes (older)."""
    lo = inp[1] if len(inp) > 1 and inp[1] is not None else a.get("min")
    hi = inp[2] if len(inp) > 2 and inp[2] is not None else a.get("max")
    return torch.clamp(inp[0], min=lo, max=hi)


def _batchnorm(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
    if a.get("training_mode", 0):
        raise UsageError(
            "surrogate: BatchNormalization in training mode is not supported; export in eval mode"
        )
    x, scale, bias, mean, var = inp[:5]
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))


def _pad(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
    if a.get("mode", "constant") != "constant":
        raise UsageError(f"surrogate: Pad mode '{a['mode']}' is not supported")
    x = inp[0]
    pads = [int(p) for p in (inp[1].tolist() if len(inp) > 1 and inp[1] is not None else a["pads"])]
    value = float(inp[2]) if len(inp) > 2 and inp[2] is not None else float(a.get("value", 0.0))
    n = x.dim()
    return _pad_input(x, pads[:n], pads[n:], value)


def _reduce_mean(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
    """ONNX ReduceMean: axes from the attribute (opset < 18) or the second input (18+); none reduces all axes
    unless ``noop_with_empty_axes``."""
    x = inp[0]
    axes = _axes(inp, a)
    keep = bool(a.get("keepdims", 1))
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return x
        return x.mean().reshape([1] * x.dim()) if keep else x.mean()
    return x.mean(dim=tuple(axes), keepdim=keep)


def _shape(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
    dims = list(inp[0].shape)[a.get("start", 0):a.get("end", None)]
    return torch.tensor(dims, dtype=torch.int64)


def _cast(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
    to = a["to"]
    if to not in ONNX_TO_TORCH:
        raise UsageError(f"surrogate: Cast to ONNX type {to} is not supported")
    return inp[0].to(ONNX_TO_TORCH[to])


def _div(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
    """ONNX Div: integer inputs divide as integers, truncating toward zero (as ONNX Runtime does, e.g. on shape
    values), floats as floats."""
    x, y = inp[0], inp[1]
    if not x.is_floating_point() and not y.is_floating_point():
        return torch.div(x, y, rounding_mode="trunc")
    return torch.div(x, y)


def _softmax(x: torch.Tensor, axis: int, opset: int = 13) -> torch.Tensor:
    """Softmax along ``axis`` (opset 13+), or over the input coerced to 2-D at ``axis`` (opset < 13)."""
    if opset >= 13:
        return torch.softmax(x, dim=axis)
    axis = axis + x.dim() if axis < 0 else axis
    return torch.softmax(x.reshape(*x.shape[:axis], -1), dim=-1).reshape(x.shape)


def _binary(fn: Callable[[Any, Any], Any]) -> Op:
    return lambda inp, a: fn(inp[0], inp[1])


def _unary(fn: Callable[[Any], Any]) -> Op:
    return lambda inp, a: fn(inp[0])


def _straight_through(fn: Callable[[Any], Any]) -> Op:
    """A piecewise-constant op (Round, Floor, Ceil) with the identity as its backward pass: BPDA (Athalye et al.
    2018), so a model that quantizes its own input cannot hide behind zero gradients."""
    def op(inp: list[Any], a: dict[str, Any]) -> Any:
        x = inp[0]
        return x + (fn(x) - x).detach() if x.is_floating_point() else fn(x)
    return op


def _global_avg(x: torch.Tensor, a: dict[str, Any]) -> torch.Tensor:
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


def _reduce_mean_attr(x: torch.Tensor, a: dict[str, Any]) -> torch.Tensor:
    return _reduce_mean([x], a)


# -------------------------------------------------------------------------------------------- registry
_EXACT = "autograd of the torch op"
_STE = "straight-through rounding (identity), zero where saturated"
_QOP = "dequantize, float op, requantize: " + _STE

#: ``ai.onnx`` operators: op type -> (function, gradient).
_ONNX_OPS: dict[str, tuple[Op, str]] = {
    "Conv": (_conv, _EXACT),
    "Gemm": (_gemm, _EXACT),
    "MatMul": (_binary(torch.matmul), _EXACT),
    "Add": (_binary(torch.add), _EXACT),
    "Sub": (_binary(torch.sub), _EXACT),
    "Mul": (_binary(torch.mul), _EXACT),
    "Div": (_div, _EXACT + "; none for integer inputs"),
    "Relu": (_unary(F.relu), _EXACT),
    "LeakyRelu": (lambda inp, a: F.leaky_relu(inp[0], a.get("alpha", 0.01)), _EXACT),
    "Sigmoid": (_unary(torch.sigmoid), _EXACT),
    "Tanh": (_unary(torch.tanh), _EXACT),
    "HardSigmoid": (lambda inp, a: torch.clamp(inp[0] * a.get("alpha", 0.2) + a.get("beta", 0.5), 0.0, 1.0),
                    _EXACT),
    "HardSwish": (_unary(F.hardswish), _EXACT),
    "Clip": (_clip, _EXACT),
    "Softmax": (lambda inp, a: torch.softmax(inp[0], dim=a.get("axis", -1)), _EXACT),
    "BatchNormalization": (_batchnorm, _EXACT + " (inference mode)"),
    "MaxPool": (lambda inp, a: _pool(inp, a, "MaxPool"), _EXACT),
    "AveragePool": (lambda inp, a: _pool(inp, a, "AveragePool"), _EXACT),
    "GlobalAveragePool": (lambda inp, a: _global_avg(inp[0], a), _EXACT),
    "GlobalMaxPool": (lambda inp, a: inp[0].amax(dim=tuple(range(2, inp[0].dim())), keepdim=True), _EXACT),
    "ReduceMean": (_reduce_mean, _EXACT),
    "Flatten": (_flatten, _EXACT),
    "Reshape": (_reshape, _EXACT),
    "Transpose": (lambda inp, a: inp[0].permute(*(a.get("perm") or reversed(range(inp[0].dim())))), _EXACT),
    "Concat": (lambda inp, a: torch.cat([t for t in inp if t is not None], dim=a["axis"]), _EXACT),
    "Squeeze": (_squeeze, _EXACT),
    "Unsqueeze": (_unsqueeze, _EXACT),
    "Gather": (_gather, _EXACT),
    "Shape": (_shape, "none (a shape)"),
    "Cast": (_cast, "exact to a float type; none to an integer type"),
    "Pad": (_pad, _EXACT + " (constant mode)"),
    "Identity": (_unary(lambda x: x), _EXACT),
    "Round": (_straight_through(torch.round), "straight-through (identity, BPDA)"),
    "Floor": (_straight_through(torch.floor), "straight-through (identity, BPDA)"),
    "Ceil": (_straight_through(torch.ceil), "straight-through (identity, BPDA)"),
    "Dropout": (_unary(lambda x: x), _EXACT + " (inference: identity)"),
    "QuantizeLinear": (_quantize, _STE + " (a QuantizeLinear -> DequantizeLinear pair runs as one fake-quant)"),
    "DequantizeLinear": (_dequantize, _EXACT + " (linear)"),
    "QLinearConv": (_qlinear_conv, _QOP),
    "QLinearMatMul": (_qlinear_matmul, _QOP),
    "MatMulInteger": (_matmul_integer, _EXACT + " on the integer values"),
    "ConvInteger": (_conv_integer, _EXACT + " on the integer values"),
    "DynamicQuantizeLinear": (_dynamic_quantize, _STE + "; scale and zero point constant"),
}

#: ``com.microsoft`` operators (ONNX Runtime's contrib ops that its quantizer writes): op type -> (function,
#: gradient).
_MS_OPS: dict[str, tuple[Op, str]] = {
    "QGemm": (_qgemm, _QOP + " (float output without y_scale)"),
    "QLinearConv": (_qlinear_conv, _QOP + " (NCHW only)"),
    "QLinearAdd": (_qlinear_binary(torch.add), _QOP),
    "QLinearMul": (_qlinear_binary(torch.mul), _QOP),
    "QLinearGlobalAveragePool": (_qlinear_unary(_nchw(_global_avg)), _QOP),
    "QLinearAveragePool": (_qlinear_unary(_nchw(lambda x, a: _pool([x], a, "AveragePool"))), _QOP),
    "QLinearConcat": (_qlinear_concat, _QOP),
    "QLinearSigmoid": (_qlinear_unary(lambda x, a: torch.sigmoid(x)), _QOP),
    "QLinearLeakyRelu": (_qlinear_unary(lambda x, a: F.leaky_relu(x, a.get("alpha", 0.01))), _QOP),
    "QLinearSoftmax": (_qlinear_unary(lambda x, a: _softmax(x, a.get("axis", -1), a.get("opset", 13))), _QOP),
    "QLinearReduceMean": (_qlinear_unary(_reduce_mean_attr), _QOP),
    "QLinearWhere": (_qlinear_where, _QOP),
    "QuantizeLinear": (_quantize, _STE),
    "DequantizeLinear": (_dequantize, _EXACT + " (linear)"),
}

_REGISTRY: dict[str, dict[str, tuple[Op, str]]] = {ONNX_DOMAIN: _ONNX_OPS, MS_DOMAIN: _MS_OPS}

#: The ``ai.onnx`` operators by type (functions only).
OPS: dict[str, Op] = {name: fn for name, (fn, _) in _ONNX_OPS.items()}


def domain_name(domain: str | None) -> str:
    """The canonical name of an ONNX domain (``""`` is ``ai.onnx``)."""
    return domain or ONNX_DOMAIN


def lookup(op: str, domain: str | None = "") -> Op | None:
    """The interpreter's function for operator ``op`` of ``domain``, or None when it has none."""
    entry = _REGISTRY.get(domain_name(domain), {}).get(op)
    return entry[0] if entry is not None else None


def supported_ops() -> list[OnnxOpInfo]:
    """Every operator the interpreter runs, by domain then op type, with how its gradient is taken."""
    return [OnnxOpInfo(op, domain, grad) for domain, table in sorted(_REGISTRY.items())
            for op, (_, grad) in sorted(table.items())]
