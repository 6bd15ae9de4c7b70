"""ONNX Runtime's integer kernels for the QDQ groups it fuses, as forward values of the QDQ interpreter.

ONNX Runtime's CPU provider rewrites ``DequantizeLinear -> Conv/Gemm/MatMul -> QuantizeLinear`` (int8/uint8 input
and weights, optional int32 bias) into ``QLinearConv``/``QGemm``/``QLinearMatMul`` (its QDQ transformer, graph
optimization level 2): the product is accumulated in int32, ``acc = sum((x_q - x_zp) * (w_q - w_zp)) + b_q``, and
requantized with the float32 multiplier ``x_scale * w_scale / y_scale`` (per output channel), rounding half to
even and saturating (MLAS ``MlasRequantizeOutput``). A Gemm without a following QuantizeLinear becomes a QGemm with
float output ``acc * x_scale * w_scale``. Convolving the dequantized floats instead gives the same value up to
float rounding, and the one-LSB flips it causes at rounding ties cascade through deep networks.

:func:`plan_integer_steps` finds those groups in the interpreter's step list (after each activation
QuantizeLinear -> DequantizeLinear pair became one ``FakeQuantize`` step); :func:`integer_value` computes the
kernel's result. The interpreter uses it as the forward value and keeps the float op's gradient
(``y_float + (y_int - y_float).detach()``): forward as ONNX Runtime, backward as the float graph.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from rkd.quantize.onnx_ops import _conv_core, _pad_input, _pads

#: Float ops that ONNX Runtime runs as integer kernels when their inputs are dequantized int8/uint8 tensors.
INTEGER_OPS = ("Conv", "Gemm", "MatMul")


#: A constant that is a DequantizeLinear of an integer initializer: ``{"q": int tensor, "scale", "zp", "axis"}``.
IntSource = dict[str, Any]


def ort_fused_outputs(onnx_path: str) -> list[str] | None:
    """The groups ONNX Runtime's CPU provider runs as integer kernels (``QLinearConv``, ``QLinearMatMul``,
    ``QGemm``, ``QLinearAdd``, ``QLinearGlobalAveragePool``) after its QDQ transformer (graph optimization level
    2), read from the graph it optimizes on this machine, as keys: the integer weight's initializer name (Conv,
    MatMul, Gemm), ``"Add:<output scale>"``, ``"GlobalAveragePool:<output scale>"``. None when ONNX Runtime is
    absent or refuses the file (then the structural rule of :func:`plan_integer_steps` applies)."""
    import tempfile
    from pathlib import Path

    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        so.log_severity_level = 3
        try:
            ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
            graph = onnx.load(so.optimized_model_filepath).graph
        except Exception:  # ONNX Runtime refuses the file: the interpreter's own errors are the ones to report
            return None
    keys: set[str] = set()
    for n in graph.node:  # activations may be renamed (int8 -> uint8 conversion); initializer names stay
        if n.op_type in ("QLinearConv", "QLinearMatMul", "QGemm") and len(n.input) > 3:
            keys.add(n.input[3])  # the integer weight
        elif n.op_type == "QLinearAdd" and len(n.input) > 6:
            keys.add(f"Add:{n.input[6]}")  # the output scale
        elif n.op_type == "QLinearGlobalAveragePool" and len(n.input) > 3:
            keys.add(f"GlobalAveragePool:{n.input[3]}")
    return sorted(keys)


def _centred_weight(src: Mapping[str, Any]) -> torch.Tensor:
    q, zp, axis = src["q"], src["zp"], src["axis"]
    if zp.numel() > 1:
        shape = [1] * q.dim()
        shape[axis + q.dim() if axis < 0 else axis] = -1
        zp = zp.reshape(shape)
    return q.to(torch.float32) - zp.to(torch.float32)


def _out_channel_axis(step: Mapping[str, Any], src: Mapping[str, Any]) -> bool:
    """Whether the weight's per-channel axis is the output channel of ``step`` (else it cannot fuse)."""
    if src["scale"].numel() == 1:
        return True
    w = src["q"]
    axis = src["axis"] + w.dim() if src["axis"] < 0 else src["axis"]
    if step["op"] == "Conv":
        return axis == 0
    if step["op"] == "Gemm":
        return axis == (0 if step["attrs"].get("transB", 0) else 1)
    return axis == w.dim() - 1  # MatMul: columns of B


def plan_integer_steps(module: nn.Module, steps: list[dict[str, Any]], int_sources: Mapping[str, IntSource],
                       output_name: str, fused: Sequence[str] | None = None) -> int:
    """Mark each Conv/Gemm/MatMul step that ONNX Runtime fuses into an integer kernel: its input is a per-tensor
    ``FakeQuantize`` output, its weight (and bias, if any) a dequantized integer constant, and its only consumer
    a per-tensor ``FakeQuantize`` (a Gemm may instead give float output); with ``fused`` (from
    :func:`ort_fused_outputs`), only the groups ONNX Runtime fused. Stores the centred integer weight,
    the int32 bias and the multiplier as non-persistent buffers of ``module``; sets ``step["integer"]``.
    Returns how many steps were marked."""
    producer = {out: s for s in steps for out in s["outputs"]}
    consumers: dict[str, list[dict[str, Any]]] = {}
    for s in steps:
        for t in s["inputs"]:
            consumers.setdefault(t, []).append(s)
    count = 0
    done = None if fused is None else set(fused)
    for s in steps:
        if s["op"] in ("Add", "GlobalAveragePool"):
            users = consumers.get(s["outputs"][0], [])
            scale = users[0]["attrs"].get("scale_name") if len(users) == 1 else None
            if done is not None and f"{s['op']}:{scale}" not in done:
                continue
            count += _plan_elementwise(module, s, producer, consumers, count)
            continue
        if s["op"] not in INTEGER_OPS or len(s["inputs"]) < 2:
            continue
        if s["op"] == "Gemm" and (s["attrs"].get("transA", 0) or s["attrs"].get("alpha", 1.0) != 1.0
                                  or s["attrs"].get("beta", 1.0) != 1.0):
            continue
        fq_in = producer.get(s["inputs"][0])
        w_src = int_sources.get(s["inputs"][1])
        if done is not None and (w_src is None or w_src["name"] not in done):
            continue
        b_name = s["inputs"][2] if len(s["inputs"]) > 2 else ""
        b_src = int_sources.get(b_name) if b_name else None
        if (not _per_tensor_fq(fq_in, consumers) or w_src is None
                or w_src["q"].dtype not in (torch.int8, torch.uint8) or not _out_channel_axis(s, w_src)
                or (b_name and (b_src is None or b_src["q"].dtype != torch.int32))):
            continue
        users = consumers.get(s["outputs"][0], [])
        fq_out = users[0] if len(users) == 1 and users[0]["op"] == "FakeQuantize" else None
        if fq_out is not None and not _per_tensor_fq(fq_out, consumers):
            continue
        if fq_out is None and (s["op"] != "Gemm" or s["outputs"][0] != output_name and users):
            continue
        key = f"int{count}"
        x_scale = getattr(module, f"{fq_in['attrs']['key']}_scale").reshape(())
        w_scale = w_src["scale"].to(torch.float32).reshape(-1)
        if fq_out is not None:
            y_scale = getattr(module, f"{fq_out['attrs']['key']}_scale").reshape(())
            mult = x_scale * w_scale / y_scale  # as ONNX Runtime computes its output scales
        else:
            y_scale, mult = None, x_scale * w_scale
        # trainable weights (quantization-aware training) are read from their parameters on every pass
        w_fixed = None if "trainable" in w_src else _centred_weight(w_src).contiguous()
        b_fixed = None if b_src is None or "trainable" in b_src else b_src["q"].to(torch.float32).reshape(-1)
        module.register_buffer(f"{key}_w", w_fixed, persistent=False)
        module.register_buffer(f"{key}_b", b_fixed, persistent=False)
        module.register_buffer(f"{key}_mult", mult, persistent=False)
        module.register_buffer(f"{key}_y", y_scale, persistent=False)
        s["integer"] = {"key": key, "x_key": fq_in["attrs"]["key"],
                        "w_trainable": w_src.get("trainable"), "b_trainable": (b_src or {}).get("trainable")}
        count += 1
    return count


def _per_tensor_fq(step: Mapping[str, Any] | None,
                   consumers: Mapping[str, list[dict[str, Any]]] | None = None) -> bool:
    """A per-tensor ``FakeQuantize`` step that ONNX Runtime's x86 CPU provider keeps in an integer kernel: uint8,
    or int8 read by one node only (its QDQ transformer turns such int8 pairs into uint8; an int8 pair with
    several readers stays int8, and x86 has no int8 x int8 QLinearConv/QLinearAdd, so the group runs in float)."""
    if step is None or step["op"] != "FakeQuantize" or step["attrs"]["per_channel"]:
        return False
    if consumers is None or step["attrs"]["dtype"] == "uint8":
        return True
    return sum(len(consumers.get(t, [])) for t in step["outputs"]) == 1


def _plan_elementwise(module: nn.Module, s: dict[str, Any], producer: Mapping[str, dict[str, Any]],
                      consumers: Mapping[str, list[dict[str, Any]]], index: int) -> int:
    """Mark an Add of two (a GlobalAveragePool of one) per-tensor fake-quantized inputs whose only consumer is
    a per-tensor ``FakeQuantize``: ONNX Runtime runs it as ``QLinearAdd`` (``QLinearGlobalAveragePool``)."""
    n_in = 2 if s["op"] == "Add" else 1
    ins = [producer.get(t) for t in s["inputs"][:n_in]]
    users = consumers.get(s["outputs"][0], [])
    if len(s["inputs"]) != n_in or not all(_per_tensor_fq(p, consumers) for p in ins) or len(users) != 1 \
            or not _per_tensor_fq(users[0], consumers):
        return 0
    s["integer"] = {"key": f"int{index}", "in_keys": [p["attrs"]["key"] for p in ins],  # type: ignore[index]
                    "y_key": users[0]["attrs"]["key"]}
    return 1


def _qparams(module: nn.Module, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    return getattr(module, f"{key}_scale").reshape(()), getattr(module, f"{key}_zp").reshape(()).to(torch.float64)


def _fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 ``a * b + c`` rounded once (a fused multiply-add), via float64."""
    return (a.to(torch.float64) * b.to(torch.float64) + c.to(torch.float64)).to(torch.float32)


def _add_value(module: nn.Module, step: Mapping[str, Any], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MLAS ``QLinearAdd`` (x86 AVX2 kernel): ``round(fma(a_q, sa/sc, fma(b_q, sb/sc, zc - fma(sa/sc, za,
    sb/sc*zb))))`` on the raw integers, as a value on the output grid."""
    (sa, za), (sb, zb) = (_qparams(module, k) for k in step["integer"]["in_keys"])
    sc, zc = _qparams(module, step["integer"]["y_key"])
    ra, rb = (sa / sc).to(torch.float32), (sb / sc).to(torch.float32)
    # the compiler contracts the constant term into a fused multiply-add too
    fixed = zc.to(torch.float32) - _fma(ra, za.to(torch.float32), rb * zb.to(torch.float32))
    qa, qb = torch.round(a / sa) + za, torch.round(b / sb) + zb
    r = _fma(qa, ra, _fma(qb, rb, fixed))
    return (torch.round(r) - zc.to(torch.float32)) * sc  # integers below 2**24: exact in float32


def _gap_value(module: nn.Module, step: Mapping[str, Any], x: torch.Tensor) -> torch.Tensor:
    """MLAS ``QLinearGlobalAveragePool``: the int32 sum of ``x_q - x_zp`` over the image requantized with
    ``x_scale / (y_scale * size)``, as a value on the output grid."""
    (sx, _), (sy, _) = _qparams(module, step["integer"]["in_keys"][0]), _qparams(module, step["integer"]["y_key"])
    size = math.prod(x.shape[2:])
    acc = torch.round(x / sx).sum(dim=tuple(range(2, x.dim())), keepdim=True)
    return torch.round(acc * (sx / (sy * float(size)))) * sy


def _trainable_centred(module: nn.Module, source: Sequence[Any]) -> torch.Tensor:
    """``q - zero_point`` (float32) of a trainable weight on its integer grid now: ``source`` is
    ``(parameter key, qmin, qmax)``."""
    key, qmin, qmax = source
    q = module._weight_int(key, qmin, qmax)  # type: ignore[operator]
    return (q - getattr(module, f"{key}_zp")).to(torch.float32)


@torch.no_grad()
def integer_value(module: nn.Module, step: Mapping[str, Any], x: torch.Tensor, other: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """The value ONNX Runtime's integer kernel gives for ``step`` on the fake-quantized input ``x``: with a
    following QuantizeLinear, ``round(acc * multiplier) * y_scale`` (which that QuantizeLinear maps exactly to
    the kernel's saturated output), else ``acc * x_scale * w_scale``."""
    if step["op"] == "Add":
        return _add_value(module, step, x, other)  # type: ignore[arg-type]
    if step["op"] == "GlobalAveragePool":
        return _gap_value(module, step, x)
    info = step["integer"]
    key = info["key"]
    x_scale = getattr(module, f"{info['x_key']}_scale").reshape(())
    xi = torch.round(x.to(torch.float32) / x_scale)  # x_q - x_zp, exactly (x is on the grid)
    w, b = getattr(module, f"{key}_w"), getattr(module, f"{key}_b")
    if info.get("w_trainable"):
        w = _trainable_centred(module, info["w_trainable"])
    if info.get("b_trainable"):
        b = _trainable_centred(module, info["b_trainable"]).reshape(-1)
    mult, y_scale = getattr(module, f"{key}_mult"), getattr(module, f"{key}_y")
    if step["op"] == "Conv":
        acc = _conv_core(xi, w, None, step["attrs"])
        shape = [1, -1] + [1] * (acc.dim() - 2)
    else:
        wt = w.t() if step["op"] == "Gemm" and step["attrs"].get("transB", 0) else w
        acc = torch.matmul(xi, wt)
        shape = [-1]
    if b is not None:
        acc = acc + b.reshape(shape)
    v = acc * (mult.reshape(shape) if mult.numel() > 1 else mult.reshape(()))
    if y_scale is None:
        return v
    return torch.round(v) * y_scale


class _StraightThrough(torch.autograd.Function):
    """Forward ``value`` (computed without gradients), backward ``grad * mask``: the straight-through gradient of
    fake quantization, zero where the input saturated."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(mask)
        return value

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None


def exact_fake_quant(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int,
                     axis: int | None) -> torch.Tensor:
    """QuantizeLinear -> DequantizeLinear as ONNX Runtime computes it (``x / scale``, round half to even; torch's
    ``fake_quantize_per_*_affine`` multiplies by ``1 / scale``, which differs at rounding ties) with their
    straight-through gradient: 1 where ``round(x / scale) + zp`` lies in ``[qmin, qmax]``, else 0. One pass of
    elementwise ops gives the value and the mask (torch's fake-quantize kernel costs several of them)."""
    if axis is None:
        s, z = scale[0], zp[0].to(torch.float32)
    else:
        shape = [1] * x.dim()
        shape[axis] = -1
        s, z = scale.reshape(shape), zp.to(torch.float32).reshape(shape)
    grad_wanted = torch.is_grad_enabled() and x.requires_grad
    with torch.no_grad():
        q = torch.div(x, s).round_().add_(z)
        if not grad_wanted:
            return q.clamp_(qmin, qmax).sub_(z).mul_(s)
        clamped = q.clamp(qmin, qmax)
        mask = clamped == q
        exact = clamped.sub_(z).mul_(s)
    return _StraightThrough.apply(x, exact, mask)


class _IntegerConv(torch.autograd.Function):
    """Forward: ONNX Runtime's integer kernel's value (given); backward: the float convolution's gradients with
    respect to its input, weight and bias (``aten.convolution_backward``), without running the float forward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, value: torch.Tensor,
                conv: tuple[list[int], list[int], list[int], int]) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.conv, ctx.bias_sizes = conv, (list(b.shape) if b is not None else None)
        return value

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, w = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        need = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad, x, w, ctx.bias_sizes, stride, padding, dilation, False, [0] * len(stride), groups, need)
        return gx, gw, gb, None, None


class _IntegerAdd(torch.autograd.Function):
    """Forward: ``QLinearAdd``'s value (given); backward: the float ``a + b``'s gradient (``grad`` to both)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return value

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        return grad, grad, None


def integer_add(a: torch.Tensor, b: torch.Tensor, value: torch.Tensor) -> torch.Tensor | None:
    """``value`` carrying the gradient of the float ``a + b``, or None when the two are broadcast (then the
    caller combines the float op as usual)."""
    if a.shape != b.shape or a.shape != value.shape:
        return None
    return _IntegerAdd.apply(a, b, value)


def integer_conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, attrs: Mapping[str, Any],
                 value: torch.Tensor) -> torch.Tensor:
    """``value`` (the integer kernel's output for ONNX ``Conv`` with ``attrs``) carrying the gradient of the float
    ``Conv(x, w, b)``: the same as ``conv + (value - conv).detach()`` at the cost of the backward alone."""
    n = w.dim() - 2
    begin, end = _pads(attrs.get("pads"), n)
    if begin != end:  # asymmetric padding: pad first (differentiable), then a convolution without padding
        x, begin = _pad_input(x, begin, end), [0] * n
    conv = (list(attrs.get("strides", [1] * n)), list(begin), list(attrs.get("dilations", [1] * n)),
            int(attrs.get("group", 1)))
    return _IntegerConv.apply(x, w, b, value, conv)


__all__ = ["INTEGER_OPS", "IntSource", "exact_fake_quant", "integer_add", "integer_conv", "integer_value",
           "ort_fused_outputs", "plan_integer_steps"]
