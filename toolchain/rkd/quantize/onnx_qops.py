"""The quantized ONNX operators of the gradient interpreter: ``QuantizeLinear``, ``DequantizeLinear``,
``DynamicQuantizeLinear``, the integer ops (``MatMulInteger``, ``ConvInteger``) and the QOperator ops
(``QLinearConv``, ``QLinearMatMul``, ``QGemm``, ``QLinearAdd``, ...), with the quantization arithmetic they
share (zero points, centring, straight-through rounding onto the integer grid) and the constant-weight
centring that :class:`rkd.quantize.surrogate.OnnxGraphModule` does once at build time
(:func:`centred_weight`).

The integer-tensor convention, the semantics and the gradient of each op are stated in
:mod:`rkd.quantize.onnx_ops`, which registers these functions with the float operators.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rkd.errors import UsageError
from rkd.quantize.onnx_common import Op, _broadcast, _conv_core, _no_channels_last, _opt

#: The integer range of each quantized type (that of a zero point).
QRANGE: dict[torch.dtype, tuple[int, int]] = {
    torch.int8: (-128, 127), torch.uint8: (0, 255), torch.int16: (-32768, 32767), torch.uint16: (0, 65535),
    torch.int32: (-2**31, 2**31 - 1),
}


# ---------------------------------------------------------------------------- quantization arithmetic
def _zero_point(zp: torch.Tensor | None, like: torch.Tensor | None = None) -> torch.Tensor:
    """An omitted zero point is 0 of the quantized type (that of ``like`` when it is an integer tensor, else
    uint8)."""
    if zp is not None:
        return zp
    dtype = like.dtype if like is not None and like.dtype in QRANGE else torch.uint8
    return torch.zeros((), dtype=dtype)


def _centred(q: torch.Tensor, zp: torch.Tensor | None, axis: int = 1) -> torch.Tensor:
    """``q - zero_point`` in float32 (``q`` an integer tensor or its float carrier; ``zp`` per tensor or per
    ``axis``)."""
    if zp is None and q.dtype == torch.float32:  # a carrier without zero point (e.g. a prepared weight)
        return q
    zp = _zero_point(zp, q)
    return q.to(torch.float32) - _broadcast(zp, q, axis).to(torch.float32)


def _dq(q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, axis: int = 1) -> torch.Tensor:
    """DequantizeLinear: ``(q - zero_point) * scale``."""
    return _centred(q, zp, axis) * _broadcast(scale.to(torch.float32), q, axis)


def _ste_round(v: torch.Tensor) -> torch.Tensor:
    """Round half to even (as ONNX QuantizeLinear) with the identity as gradient (straight-through)."""
    if not (v.requires_grad and torch.is_grad_enabled()):  # no gradient wanted: one pass instead of three
        return torch.round(v)
    return v + (torch.round(v) - v).detach()


def _to_grid(v: torch.Tensor, zp: torch.Tensor | None, axis: int = 1, like: torch.Tensor | None = None
             ) -> torch.Tensor:
    """``saturate(round(v) + zero_point)`` as a float carrier: straight-through rounding, the clamp's own gradient
    (zero where saturated). The range is the zero point's type."""
    zp = _zero_point(zp, like)
    if zp.dtype not in QRANGE:
        raise UsageError(f"surrogate: quantization to {zp.dtype} is not supported")
    lo, hi = QRANGE[zp.dtype]
    q = _ste_round(v)
    if not q.requires_grad:  # in place: saves two passes over the activation
        return q.add_(_broadcast(zp, v, axis).to(v.dtype)).clamp_(lo, hi)
    return (q + _broadcast(zp, v, axis).to(v.dtype)).clamp(lo, hi)


def _requantize(y: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, axis: int = 1,
                like: torch.Tensor | None = None) -> torch.Tensor:
    """QuantizeLinear of float ``y``: ``saturate(round(y / scale) + zero_point)`` (carrier, straight-through)."""
    return _to_grid(y / _broadcast(scale.to(y.dtype), y, axis), zp, axis, like)


# ----------------------------------------------------------------------- QuantizeLinear, DequantizeLinear
def _qparams(inp: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    scale = inp[1]
    zp = inp[2] if len(inp) > 2 and inp[2] is not None else torch.zeros((), dtype=torch.uint8)
    return scale, zp


def _quantize(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
    """ONNX QuantizeLinear: ``saturate(round(x / scale) + zero_point)``, round half to even. A float ``x`` gives a
    float carrier of the integers (straight-through rounding, zero gradient where saturated); an integer ``x``
    gives the integer type."""
    x = inp[0]
    scale, zp = _qparams(inp)
    if zp.dtype not in QRANGE:
        raise UsageError(f"surrogate: QuantizeLinear to {zp.dtype} is not supported")
    axis = a.get("axis", 1)
    if x.is_floating_point():
        return _requantize(x.to(torch.float32), scale, zp, axis)
    lo, hi = QRANGE[zp.dtype]
    q = torch.round(x / _broadcast(scale, x, axis)) + _broadcast(zp, x, axis).to(scale.dtype)
    return q.clamp_(lo, hi).to(zp.dtype)


def _dequantize(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
    """ONNX DequantizeLinear: ``(x - zero_point) * scale``, in float32 (``x`` an integer tensor or its carrier)."""
    x = inp[0]
    scale, zp = _qparams(inp)
    axis = a.get("axis", 1)
    if x.is_floating_point():
        return (x - _broadcast(zp, x, axis).to(x.dtype)) * _broadcast(scale, x, axis)
    centred = x.to(torch.int64) - _broadcast(zp, x, axis).to(torch.int64)
    return centred.to(scale.dtype) * _broadcast(scale, x, axis)


# ------------------------------------------------------------------------------------- QOperator ops
def _qlinear_conv(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
    """ONNX QLinearConv (and com.microsoft QLinearConv, NCHW): the integer accumulation
    ``conv(x - x_zp, w - w_zp) + B`` requantized with ``x_scale * w_scale / y_scale`` (per output channel)."""
    _no_channels_last(a, "QLinearConv")
    x, xs, xzp, w, ws, wzp, ys, yzp = inp[:8]
    b = _opt(inp, 8)
    acc = _conv_core(_centred(x, xzp), _centred(w, wzp, axis=0), None if b is None else b.to(torch.float32), a,
                     "QLinearConv")
    mult = xs.to(torch.float32) * ws.to(torch.float32) / ys.to(torch.float32)
    return _to_grid(acc * _broadcast(mult.reshape(-1), acc, 1), yzp, like=x)


def _per_row(param: torch.Tensor | None, m: torch.Tensor) -> torch.Tensor | None:
    """A per-row (1-D of M) quantization parameter of matrix ``m`` shaped ``(M, 1)``; scalars unchanged."""
    if param is None or param.numel() == 1:
        return None if param is None else param.reshape(())
    return param.reshape(-1, 1)


def _per_col(param: torch.Tensor | None) -> torch.Tensor | None:
    if param is None or param.numel() == 1:
        return None if param is None else param.reshape(())
    return param.reshape(-1)


def _centred_rows(q: torch.Tensor, zp: torch.Tensor | None) -> torch.Tensor:
    if zp is None and q.dtype == torch.float32:
        return q
    z = _per_row(_zero_point(zp, q), q)
    return q.to(torch.float32) - z.to(torch.float32)  # type: ignore[union-attr]


def _centred_cols(q: torch.Tensor, zp: torch.Tensor | None) -> torch.Tensor:
    if zp is None and q.dtype == torch.float32:
        return q
    z = _per_col(_zero_point(zp, q))
    return q.to(torch.float32) - z.to(torch.float32)  # type: ignore[union-attr]


def _qlinear_matmul(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
    """ONNX QLinearMatMul: ``(a - a_zp) @ (b - b_zp)`` requantized with ``a_scale * b_scale / y_scale`` (a per
    row, b per column)."""
    qa, sa, za, qb, sb, zb, sy, zy = inp[:8]
    acc = _centred_rows(qa, za) @ _centred_cols(qb, zb)
    mult = (_per_row(sa.to(torch.float32), qa) * _per_col(sb.to(torch.float32))  # type: ignore[operator]
            / _per_row(sy.to(torch.float32), acc))
    return _to_grid(acc * mult, zy.reshape(()) if zy is not None else None, like=qa)


def _matmul_integer(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
    """ONNX MatMulInteger: ``(A - a_zp) @ (B - b_zp)`` as int32 values (carried in float32)."""
    qa, qb = inp[0], inp[1]
    return _centred_rows(qa, _opt(inp, 2)) @ _centred_cols(qb, _opt(inp, 3))


def _conv_integer(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
    """ONNX ConvInteger: ``conv(x - x_zp, w - w_zp)`` as int32 values (carried in float32)."""
    x, w = inp[0], inp[1]
    return _conv_core(_centred(x, _opt(inp, 2)), _centred(w, _opt(inp, 3), axis=0), None, a, "ConvInteger")


def _dynamic_quantize(inp: list[Any], a: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ONNX DynamicQuantizeLinear: uint8 with ``scale = (max(x, 0) - min(x, 0)) / 255`` and
    ``zero_point = saturate(round(-min(x, 0) / scale))`` over the whole tensor; scale and zero point are
    constants for the gradient, the rounding is straight-through."""
    x = inp[0].to(torch.float32)
    with torch.no_grad():
        lo = torch.clamp(x.min(), max=0.0)
        hi = torch.clamp(x.max(), min=0.0)
        scale = (hi - lo) / 255.0
        zp = torch.round(-lo / scale).clamp(0, 255).to(torch.uint8)
    return _requantize(x, scale, zp), scale, zp


def _qgemm(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
    """com.microsoft QGemm: ``alpha * a_scale * b_scale * ((A' - a_zp)(B' - b_zp) + C)`` (C int32 with scale
    ``alpha * a_scale * b_scale``), float when ``y_scale`` is omitted, else requantized to ``y_scale``/``y_zp``.
    ``b_scale``/``b_zp`` are per tensor or per column of B'."""
    qa, sa, za, qb, sb, zb = inp[:6]
    c, sy, zy = _opt(inp, 6), _opt(inp, 7), _opt(inp, 8)
    ca = _centred(qa, za)
    ca = ca.t() if a.get("transA", 0) else ca
    if a.get("transB", 0):  # B is (N, K): per-column parameters run along its rows
        cb = _centred_rows(qb, zb).t()
    else:
        cb = _centred_cols(qb, zb)
    acc = ca @ cb
    if c is not None:
        acc = acc + c.to(torch.float32)
    scale = float(a.get("alpha", 1.0)) * sa.to(torch.float32).reshape(()) * _per_col(sb.to(torch.float32))
    if sy is None:
        return acc * scale
    return _to_grid(acc * (scale / sy.to(torch.float32).reshape(())), zy, like=qa)


def _qlinear_binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Op:
    """com.microsoft QLinearAdd / QLinearMul: ``quantize(fn(dequantize(A), dequantize(B)))``."""
    def op(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
        qa, sa, za, qb, sb, zb, sc = inp[:7]
        return _requantize(fn(_dq(qa, sa, za), _dq(qb, sb, zb)), sc, _opt(inp, 7), like=qa)
    return op


def _qlinear_unary(fn: Callable[[torch.Tensor, dict[str, Any]], torch.Tensor]) -> Op:
    """com.microsoft QLinear<Op>(X, X_scale, X_zp, Y_scale, Y_zp): ``quantize(fn(dequantize(X)))``."""
    def op(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
        x, sx, zx, sy = inp[:4]
        return _requantize(fn(_dq(x, sx, zx), a), sy, _opt(inp, 4), like=x)
    return op


def _nchw(fn: Callable[[torch.Tensor, dict[str, Any]], torch.Tensor]) -> Callable[[torch.Tensor, dict[str, Any]],
                                                                                    torch.Tensor]:
    """``fn`` of an NCHW tensor applied to an NHWC one when ``channels_last=1``."""
    def run(x: torch.Tensor, a: dict[str, Any]) -> torch.Tensor:
        if not a.get("channels_last", 0):
            return fn(x, a)
        perm = [0, x.dim() - 1, *range(1, x.dim() - 1)]
        back = [0, *range(2, x.dim()), 1]
        return fn(x.permute(perm), a).permute(back)
    return run


def _qlinear_concat(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
    """com.microsoft QLinearConcat(Y_scale, Y_zp, X1, X1_scale, X1_zp, ...): concatenate the dequantized inputs
    along ``axis`` and quantize to ``Y_scale``/``Y_zp``."""
    sy, zy, rest = inp[0], inp[1], inp[2:]
    parts = [_dq(rest[i], rest[i + 1], rest[i + 2]) for i in range(0, len(rest), 3)]
    return _requantize(torch.cat(parts, dim=a["axis"]), sy, zy, like=rest[0])


def _qlinear_where(inp: list[Any], a: dict[str, Any]) -> torch.Tensor:
    """com.microsoft QLinearWhere: ``quantize(where(condition, dequantize(X), dequantize(Y)))``."""
    cond, x, sx, zx, y, sy, zy, sz, zz = inp[:9]
    return _requantize(torch.where(cond.bool(), _dq(x, sx, zx), _dq(y, sy, zy)), sz, zz, like=x)


#: Integer-weight ops whose constant weight can be centred once: op -> (weight input, its zero point input, how).
CENTRED_WEIGHTS: dict[str, tuple[int, int, str]] = {
    "QLinearConv": (3, 5, "channels"), "ConvInteger": (1, 3, "channels"), "QLinearMatMul": (3, 5, "cols"),
    "MatMulInteger": (1, 3, "cols"), "QGemm": (3, 5, "gemm"),
}


def centred_weight(op: str, w: torch.Tensor, zp: torch.Tensor | None, a: dict[str, Any]) -> torch.Tensor:
    """``w - w_zero_point`` of a constant weight of ``op`` (a :data:`CENTRED_WEIGHTS` op) as float32, as the op
    computes it: the op gives the same result for this tensor with its zero point omitted, so the interpreter
    converts each weight once instead of on every forward pass."""
    how = CENTRED_WEIGHTS[op][2]
    if how == "channels":
        return _centred(w, zp, axis=0)
    if how == "gemm" and a.get("transB", 0):
        return _centred_rows(w, zp)
    return _centred_cols(w, zp)
