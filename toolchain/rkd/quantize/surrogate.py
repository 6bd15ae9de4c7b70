"""The differentiable surrogate of an ONNX classifier (float, INT8 QDQ or INT8 QOperator): the graph itself,
executed with torch ops.

Design (chosen over hooking the original torch modules): :class:`OnnxGraphModule` interprets the ONNX file
node by node, so whatever ``quantize_static`` wrote (BatchNorm folded into Conv by the exporter,
Relu removed after asymmetric Q, shared scales across MaxPool/Flatten, the normalisation Sub/Div, float
logits) is replicated exactly by construction, with no mapping from ONNX names back to torch modules:

- ``DequantizeLinear`` of a constant (int8 per-channel weights, int32 biases) is evaluated once at build time
  with the file's own scales and zero points; the dequantized weights become frozen ``nn.Parameter`` s.
- Every activation ``QuantizeLinear -> DequantizeLinear`` pair becomes one fake-quant op with the pair's
  scale, zero point and integer range (int8: -128..127, uint8: 0..255):
  ``torch.fake_quantize_per_tensor_affine`` (``_per_channel_affine`` for an ``axis``). Its gradient is the
  straight-through estimator, masked where the value saturates (the true derivative of the clamp):
  ``dout/dx=1`` inside the quantization range.
- Everything else (Conv, Gemm, Add, Relu, pools, BatchNormalization, Reshape, ..., and the QOperator ops
  ``QLinearConv``, ``QGemm``, ``QLinearAdd``, ... that ``QuantFormat.QOperator`` writes: dequantize, float op,
  requantize with straight-through rounding) runs as its torch function in :mod:`rkd.quantize.onnx_ops`, whose
  docstring states each gradient choice; :func:`supported_ops` lists them. A graph using an operator missing
  there is refused when it is read (:func:`~rkd.quantize.onnx_graph.graph_spec`), with an
  :class:`~rkd.errors.UnsupportedOperatorError` naming each such operator, its count and its first node.

The forward value therefore matches ONNX Runtime's INT8 output up to float rounding at quantization ties
(ONNX Runtime fuses DQ -> Conv -> Q into integer kernels that requantize with a float multiplier); agreement
is measured by :func:`agreement`; ``rkd quantize`` and ``rkd verify`` warn below 99% top-1 (a model whose
logits move with one-LSB rounding flips can fall below it: ``benchmarks/surrogate_agreement.py``). Input: float
NCHW in [0, 1]; output: logits.

The module owns its weights as parameters (``requires_grad=False``), so ``next(model.parameters())`` gives the
device, as attack libraries expect; ``set_fake_quant(False)`` turns activation quantization off (weights stay
quantized) for diagnostics. Files: :func:`save_surrogate` writes the QDQ graph's raw tensors (int8 weights,
scales, zero points) as safetensors plus a JSON sidecar holding the node list; :func:`load_surrogate` rebuilds
the module from them (no pickle).

This module holds :class:`OnnxGraphModule` (the node list turned into steps: constant folding, fused
fake-quant pairs, trainable weights, integer kernels; and ``forward``), :func:`build_surrogate`,
:func:`onnx_module` and :func:`agreement`. Reading the ONNX file into the node list is
:mod:`rkd.quantize.onnx_graph`; the files are :mod:`rkd.quantize.surrogate_files`; their public names stay
importable from here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rkd.attacks.predictions import batched_logits, logit_agreement
from rkd.errors import UsageError
from rkd.quantize.onnx_common import Op, _broadcast
from rkd.quantize.onnx_graph import graph_spec, unsupported_operator_error
from rkd.quantize.onnx_ops import OPS, domain_name, lookup, supported_ops
from rkd.quantize.onnx_qops import CENTRED_WEIGHTS, QRANGE, _dequantize, centred_weight
from rkd.quantize.qdq_integer import (
    IntSource,
    exact_fake_quant,
    integer_add,
    integer_conv,
    integer_value,
    ort_fused_outputs,
    plan_integer_steps,
)
from rkd.quantize.surrogate_files import (
    FORMAT,
    FORMAT_VERSION,
    KIND,
    load_surrogate,
    save_surrogate,
    sidecar_path,
)

__all__ = ["FORMAT", "FORMAT_VERSION", "KIND", "OPS", "OnnxGraphModule", "agreement", "build_surrogate",
           "graph_spec", "load_surrogate", "onnx_module", "save_surrogate", "sidecar_path", "supported_ops",
           "unsupported_operator_error"]

_QRANGE = QRANGE


# ------------------------------------------------------------------------------------------- the module
def _op_fn(node: Mapping[str, Any], source: str) -> Op:
    fn = lookup(node["op"], node.get("domain", ""))
    if fn is None:  # a sidecar written by another rkd version
        raise unsupported_operator_error(source, {f"{domain_name(node.get('domain'))}:{node['op']}":
                                                        (node["op"], 1, node["name"])})
    return fn


class OnnxGraphModule(nn.Module):
    """A torch interpreter of a (QDQ) ONNX classifier graph with fake quantization; see the module docstring.

    Args:
        spec: ``{"input", "output", "opset", "nodes": [{"name", "op", "inputs", "outputs", "attrs"}]}``
            as from :func:`graph_spec`.
        tensors: the graph's constants by name (int8/uint8/int32/int64/float32 CPU tensors).
        source: where the graph came from (file name and sha256), kept for the sidecar.
    """

    def __init__(
        self,
        spec: Mapping[str, Any],
        tensors: Mapping[str, torch.Tensor],
        source: Mapping[str, Any] | None = None,
        trainable: bool = False,
    ) -> None:
        super().__init__()
        self.trainable = bool(trainable)
        #: trainable weights (``trainable=True``): ONNX initializer name -> parameter key (see
        #: :meth:`quantized_weights`).
        self.weight_keys: dict[str, str] = {}
        self.spec = json.loads(json.dumps(spec))
        self.raw = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        self.source = dict(source or {})
        self.fake_quant_enabled = True
        self.input_name: str = self.spec["input"]
        self.output_name: str = self.spec["output"]
        consts: dict[str, torch.Tensor] = dict(self.raw)
        int_sources: dict[str, IntSource] = {}  # dequantized integer initializers, for the integer kernels
        steps: list[dict[str, Any]] = []
        for node in self.spec["nodes"]:
            attrs = {k: (self.raw[v["__tensor__"]] if isinstance(v, dict) else v)
                     for k, v in node["attrs"].items()}
            ins = node["inputs"]
            if self.trainable and self._is_weight_dq(node, ins):
                steps.append(self._weight_step(node, ins, attrs))
                a = steps[-1]["attrs"]
                int_sources[node["outputs"][0]] = self._int_source(ins, attrs, consts) | {
                    "trainable": (a["key"], a["qmin"], a["qmax"])}
                continue
            fn = _op_fn(node, str(self.source.get("file") or "the graph"))
            if all(not t or t in consts for t in ins):  # constant folding: weight DQ, shape arithmetic
                with torch.no_grad():
                    out = fn([consts[t] if t else None for t in ins], attrs)
                outs = out if isinstance(out, (list, tuple)) else [out]
                for name, value in zip(node["outputs"], outs, strict=False):
                    consts[name] = value.detach().contiguous()
                if self._is_weight_dq(node, ins):
                    int_sources[node["outputs"][0]] = self._int_source(ins, attrs, consts)
                continue
            steps.append({"name": node["name"], "op": node["op"], "inputs": ins, "outputs": node["outputs"],
                          "attrs": attrs, "fn": fn})
        steps = self._fuse_qdq(steps, consts)
        self._centre_weights(steps, consts)
        needed = {t for s in steps for t in s["inputs"] if t and t in consts}
        self._const_keys: dict[str, tuple[str, str]] = {}
        for i, name in enumerate(sorted(needed)):
            value = consts[name]
            key = f"c{i}"
            if value.is_floating_point() and value.dim() >= 2:
                self.register_parameter(key, nn.Parameter(value.clone(), requires_grad=False))
                self._const_keys[name] = ("param", key)
            else:
                self.register_buffer(key, value.clone(), persistent=False)
                self._const_keys[name] = ("buffer", key)
        if not any(True for _ in self.parameters()):  # attack libraries read the device from a parameter
            self.register_parameter("device_anchor", nn.Parameter(torch.zeros(0), requires_grad=False))
        self.steps = steps
        #: Conv/Gemm/MatMul steps computed as ONNX Runtime's integer kernels (:mod:`rkd.quantize.qdq_integer`)
        self.num_integer_ops = plan_integer_steps(self, steps, int_sources, self.output_name,
                                                  self.spec.get("ort_fused"))
        self.num_fake_quant = sum(s["op"] == "FakeQuantize" for s in steps)
        self.num_quantized_weights = sum(
            1 for n in self.spec["nodes"]
            if n["op"] == "DequantizeLinear" and n["inputs"][0] in self.raw
            and self.raw[n["inputs"][0]].dtype in (torch.int8, torch.uint8)
        )

    @staticmethod
    def _centre_weights(steps: list[dict[str, Any]], consts: dict[str, torch.Tensor]) -> None:
        """Convert each constant integer weight of a QOperator op (QLinearConv, QGemm, ...) to its centred float
        value once, in place of doing it on every forward pass (:func:`~rkd.quantize.onnx_ops.centred_weight`):
        the step then reads the prepared tensor with its zero point omitted. These weights are constants, never
        trainable, so the prepared value cannot go stale."""
        for s in steps:
            where = CENTRED_WEIGHTS.get(s["op"])
            if where is None:
                continue
            wi, zi = where[:2]
            ins = s["inputs"]
            w = ins[wi] if len(ins) > wi else ""
            zp = ins[zi] if len(ins) > zi else ""
            if not w or w not in consts or (zp and zp not in consts):
                continue
            name = f"{w}::centred"
            consts[name] = centred_weight(s["op"], consts[w], consts[zp] if zp else None, s["attrs"]).contiguous()
            s["inputs"] = [name if i == wi else "" if i == zi else t for i, t in enumerate(ins)]

    @staticmethod
    def _int_source(ins: Sequence[str], attrs: Mapping[str, Any], consts: Mapping[str, torch.Tensor]
                    ) -> dict[str, Any]:
        """The integer initializer behind a weight DequantizeLinear (for the integer kernels)."""
        zp = consts[ins[2]] if len(ins) > 2 and ins[2] else torch.zeros((), dtype=consts[ins[0]].dtype)
        return {"name": ins[0], "q": consts[ins[0]], "scale": consts[ins[1]], "zp": zp, "axis": attrs.get("axis", 1)}

    def _is_weight_dq(self, node: Mapping[str, Any], ins: Sequence[str]) -> bool:
        """A DequantizeLinear of an integer initializer (int8/uint8 weights, int32 biases) with constant
        scale and zero point."""
        return (node["op"] == "DequantizeLinear" and bool(ins) and ins[0] in self.raw
                and self.raw[ins[0]].dtype in (torch.int8, torch.uint8, torch.int32)
                and all(t in self.raw for t in ins[1:3] if t))

    def _weight_step(self, node: Mapping[str, Any], ins: Sequence[str], attrs: dict[str, Any]) -> dict[str, Any]:
        """A trainable float weight initialised from the dequantized integer initializer ``ins[0]``, fake-
        quantized on every forward with the file's scale and zero point (straight-through)."""
        q = self.raw[ins[0]]
        scale = self.raw[ins[1]]
        zp = self.raw[ins[2]] if len(ins) > 2 and ins[2] else torch.zeros((), dtype=q.dtype)
        axis = attrs.get("axis", 1)
        key = f"w{len(self.weight_keys)}"
        with torch.no_grad():
            w = _dequantize([q, scale, zp], attrs)
        self.register_parameter(key, nn.Parameter(w.float().clone(), requires_grad=True))
        self.register_buffer(f"{key}_scale", _broadcast(scale.float(), q, axis).clone(), persistent=False)
        self.register_buffer(f"{key}_zp", _broadcast(zp.to(torch.int64), q, axis).clone(), persistent=False)
        self.weight_keys[ins[0]] = key
        lo, hi = _QRANGE[q.dtype]
        return {"name": node["name"], "op": "WeightFakeQuantize", "inputs": [], "outputs": node["outputs"],
                "attrs": {"key": key, "qmin": lo, "qmax": hi, "dtype": str(q.dtype).removeprefix("torch.")}}

    def _weight_int(self, key: str, qmin: int, qmax: int) -> torch.Tensor:
        """The integer grid value (int64) of trainable weight ``key``: clamp(round(w / scale) + zp)."""
        w = getattr(self, key)
        scale, zp = getattr(self, f"{key}_scale"), getattr(self, f"{key}_zp")
        return (torch.round(w / scale).to(torch.int64) + zp).clamp(qmin, qmax)

    def _weight_fake_quant(self, a: dict[str, Any]) -> torch.Tensor:
        w = getattr(self, a["key"])
        scale, zp = getattr(self, f"{a['key']}_scale"), getattr(self, f"{a['key']}_zp")
        with torch.no_grad():
            q = self._weight_int(a["key"], a["qmin"], a["qmax"])
            deq = (q - zp).to(scale.dtype) * scale  # exactly as DequantizeLinear (constant folding)
        return w + (deq - w).detach()  # straight-through

    @torch.no_grad()
    def quantized_weights(self) -> dict[str, torch.Tensor]:
        """``trainable=True`` only: ONNX initializer name -> the current weights on the file's integer grid
        (same dtype and shape as the initializer)."""
        out: dict[str, torch.Tensor] = {}
        for s in self.steps:
            if s["op"] != "WeightFakeQuantize":
                continue
            a = s["attrs"]
            name = next(n for n, k in self.weight_keys.items() if k == a["key"])
            q = self._weight_int(a["key"], a["qmin"], a["qmax"]).cpu()
            out[name] = q.to(getattr(torch, a["dtype"])).reshape(self.raw[name].shape)
        return out

    def _fuse_qdq(self, steps: list[dict[str, Any]], consts: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        """Replace each activation QuantizeLinear whose consumers are all matching DequantizeLinear nodes by
        one FakeQuantize step writing every consumer's output."""
        consumers: dict[str, list[int]] = {}
        for i, s in enumerate(steps):
            for t in s["inputs"]:
                consumers.setdefault(t, []).append(i)
        drop: set[int] = set()
        fused: dict[int, dict[str, Any]] = {}
        for i, s in enumerate(steps):
            if s["op"] != "QuantizeLinear" or s["outputs"][0] == self.output_name:
                continue
            users = consumers.get(s["outputs"][0], [])
            qp = s["inputs"][1:3]
            if not users or not all(
                steps[j]["op"] == "DequantizeLinear" and steps[j]["inputs"][0] == s["outputs"][0]
                and self._same_qparams(qp, steps[j]["inputs"][1:3], consts)
                and steps[j]["attrs"].get("axis", 1) == s["attrs"].get("axis", 1)
                for j in users
            ):
                continue
            if not all(t in consts for t in qp if t):
                continue
            scale = consts[qp[0]]
            zp = consts[qp[1]] if len(qp) > 1 and qp[1] else torch.zeros((), dtype=torch.uint8)
            if zp.dtype not in _QRANGE:
                continue
            lo, hi = _QRANGE[zp.dtype]
            key = f"fq{i}"
            self.register_buffer(f"{key}_scale", scale.to(torch.float32).reshape(-1).clone(),
                                 persistent=False)
            self.register_buffer(f"{key}_zp", zp.to(torch.int32).reshape(-1).clone(), persistent=False)
            fused[i] = {"name": s["name"], "op": "FakeQuantize", "inputs": [s["inputs"][0]],
                        "outputs": [steps[j]["outputs"][0] for j in users],
                        "attrs": {"key": key, "qmin": lo, "qmax": hi, "axis": s["attrs"].get("axis", 1),
                                  "per_channel": scale.numel() > 1, "scale_name": qp[0],
                                  "dtype": str(zp.dtype).removeprefix("torch.")}}
            drop.update(users)
        return [fused.get(i, s) for i, s in enumerate(steps) if i not in drop]

    @staticmethod
    def _same_qparams(a: Sequence[str], b: Sequence[str], consts: dict[str, torch.Tensor]) -> bool:
        for x, y in zip(a, b, strict=False):
            if x == y:
                continue
            if not (x in consts and y in consts and torch.equal(consts[x], consts[y])):
                return False
        return len(a) == len(b)

    def set_fake_quant(self, enabled: bool) -> OnnxGraphModule:
        """Turn activation fake quantization on (default) or off; weights stay dequantized INT8 either way."""
        self.fake_quant_enabled = bool(enabled)
        return self

    def _fake_quant(self, x: torch.Tensor, a: dict[str, Any]) -> torch.Tensor:
        if not self.fake_quant_enabled:
            return x
        scale, zp = getattr(self, f"{a['key']}_scale"), getattr(self, f"{a['key']}_zp")
        if x.dtype != torch.float32:
            x = x.float()
        axis = (a["axis"] + x.dim() if a["axis"] < 0 else a["axis"]) if a["per_channel"] else None
        return exact_fake_quant(x, scale, zp, a["qmin"], a["qmax"], axis)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for float NCHW images ``x`` in [0, 1] (on the module's device)."""
        env: dict[str, Any] = {self.input_name: x}
        for name, (_, key) in self._const_keys.items():
            env[name] = getattr(self, key)
        for s in self.steps:
            args = [env[t] if t else None for t in s["inputs"]]
            if s["op"] == "WeightFakeQuantize":
                env[s["outputs"][0]] = self._weight_fake_quant(s["attrs"])
                continue
            if s["op"] == "FakeQuantize":
                y = self._fake_quant(args[0], s["attrs"])
                for out in s["outputs"]:
                    env[out] = y
                continue
            if "integer" in s and self.fake_quant_enabled:  # forward as ONNX Runtime's kernel, float gradient
                value = integer_value(self, s, *args[:2])
                if not (torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in args)):
                    out = value  # no gradient wanted: the float op is not needed
                elif s["op"] == "Conv":  # the float convolution's gradient without its forward
                    out = integer_conv(args[0], args[1], args[2] if len(args) > 2 else None, s["attrs"], value)
                elif s["op"] != "Add" or (out := integer_add(args[0], args[1], value)) is None:
                    out = s["fn"](args, s["attrs"])
                    out = out + (value - out).detach()
            else:
                out = s["fn"](args, s["attrs"])
            if isinstance(out, (list, tuple)):
                for name, value in zip(s["outputs"], out, strict=False):
                    env[name] = value
            else:
                env[s["outputs"][0]] = out
        out = env[self.output_name]
        if x.requires_grad and not out.requires_grad:  # no differentiable path (e.g. only through a Cast to int):
            out = out + 0.0 * x.sum()  # the same values, a gradient of exactly zero that the checks then count
        return out

    def extra_repr(self) -> str:
        return (f"steps={len(self.steps)}, fake_quant={self.num_fake_quant}, "
                f"int8_weights={self.num_quantized_weights}, source={self.source.get('file')}")


def build_surrogate(int8_onnx: str | Path, *, trainable: bool = False) -> OnnxGraphModule:
    """The fake-quant surrogate of the QDQ file ``int8_onnx`` (see the module docstring), in eval mode on CPU.

    ``trainable=True`` (quantization-aware training, :mod:`rkd.quantize.qat`): every DequantizeLinear of an
    integer initializer (int8 weights, int32 biases) becomes a trainable float parameter initialised from the
    dequantized value and fake-quantized on every forward with the file's scale and zero point
    (straight-through gradient); activations keep the file's fixed scales. Before any update its output
    equals the frozen surrogate's exactly.

    Raises:
        UsageError: a missing file, or a file without any QuantizeLinear (a float model needs no surrogate).
        UnsupportedOperatorError: operators the interpreter lacks (all named). CheckpointError: an unreadable
            ONNX file.
    """
    path = Path(int8_onnx)
    spec, tensors = graph_spec(path)
    if not any(n["op"] == "QuantizeLinear" for n in spec["nodes"]):
        raise UsageError(f"'{path}' has no QuantizeLinear nodes: not a QDQ model (run rkd quantize first)")
    return _module(path, spec, tensors, trainable)


def onnx_module(onnx_path: str | Path) -> OnnxGraphModule:
    """Any rkd ONNX classifier (float or QDQ) as a differentiable torch module, in eval mode on CPU.

    For a QDQ file this is :func:`build_surrogate`; for a float file it is the float model itself (same
    graph, same weights), which makes the float ``model.onnx`` of a bundle its own gradient source. A QOperator
    file (``QLinearConv``, ``QGemm``, ...) runs as :mod:`rkd.quantize.onnx_ops` defines those operators.

    Raises:
        UnsupportedOperatorError: operators the interpreter lacks, each named with its count and first node.
    """
    path = Path(onnx_path)
    spec, tensors = graph_spec(path)
    return _module(path, spec, tensors, False)


def _module(path: Path, spec: dict[str, Any], tensors: dict[str, torch.Tensor], trainable: bool) -> OnnxGraphModule:
    from rkd.deploy.bundle import file_sha256

    if any(n["op"] == "QuantizeLinear" for n in spec["nodes"]):
        fused = ort_fused_outputs(str(path))
        if fused is not None:
            spec = {**spec, "ort_fused": fused}
    return OnnxGraphModule(spec, tensors, source={"file": path.name, "sha256": file_sha256(path)},
                           trainable=trainable).eval()


@torch.no_grad()
def agreement(
    surrogate: nn.Module, int8_onnx: str | Path | Any, x: torch.Tensor, *, batch_size: int = 256
) -> dict[str, Any]:
    """Top-1 agreement and logit difference of ``surrogate`` (torch) and the INT8 model (ONNX Runtime CPU).

    Args:
        surrogate: the fake-quant module (run on its own device, eval mode).
        int8_onnx: the QDQ file, or an open :class:`rkd.deploy.runtimes.OnnxRuntime` of it.
        x: float32 NCHW images in [0, 1].
        batch_size: images per run.

    Returns:
        ``{"n", "top1_agreement", "top1_disagreements", "max_abs_diff", "mean_abs_diff", "max_abs_logit"}``.
    """
    from rkd.deploy.runtimes import OnnxRuntime

    if x.ndim != 4 or len(x) == 0:
        raise UsageError(f"agreement needs a non-empty NCHW batch, got shape {tuple(x.shape)}")
    if isinstance(int8_onnx, OnnxRuntime):
        engine = int8_onnx
    else:
        engine = OnnxRuntime(int8_onnx, batch_size=batch_size)
    surrogate.eval()
    ref = engine.predict(x.cpu()).cpu()
    return logit_agreement(batched_logits(surrogate, x, batch_size), ref) | {"max_abs_logit": float(ref.abs().max())}
