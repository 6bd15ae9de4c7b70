"""Reading an ONNX classifier into the gradient interpreter's node list (:func:`graph_spec`): the JSON-ready
nodes with their attributes, the initializers and ``Constant`` values as tensors, and the refusal of a graph
that uses operators the interpreter lacks (:func:`unsupported_operator_error`, one line naming each such
operator, its count and its first node). :class:`rkd.quantize.surrogate.OnnxGraphModule` builds its steps from
this list, and the surrogate's JSON sidecar (:mod:`rkd.quantize.surrogate_files`) stores it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rkd.errors import CheckpointError, UnsupportedOperatorError, UsageError
from rkd.quantize.onnx_ops import domain_name, lookup

__all__ = ["graph_spec", "unsupported_operator_error"]


def _attr_value(attr: Any, node_name: str, tensors: dict[str, torch.Tensor]) -> Any:
    import onnx
    from onnx import numpy_helper

    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, onnx.TensorProto):
        key = f"{node_name}::{attr.name}"
        tensors[key] = torch.from_numpy(np.array(numpy_helper.to_array(value)))
        return {"__tensor__": key}
    if isinstance(value, (list, tuple)):
        return [v.decode("utf-8") if isinstance(v, bytes) else v for v in value]
    if isinstance(value, (int, float, str)):
        return value
    raise UsageError(f"surrogate: attribute '{attr.name}' of node '{node_name}' has an unsupported type")


def _constant_value(attrs: dict[str, Any], name: str, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The tensor of an ONNX Constant node (``value`` or one of ``value_float(s)``/``value_int(s)``)."""
    if isinstance(attrs.get("value"), dict):
        return tensors.pop(attrs["value"]["__tensor__"])
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32),
                       ("value_int", torch.int64), ("value_ints", torch.int64)):
        if key in attrs:
            return torch.tensor(attrs[key], dtype=dtype)
    raise UsageError(f"surrogate: Constant node '{name}' without a tensor, float or int value is not supported")


def unsupported_operator_error(path: str | Path, missing: Mapping[str, tuple[str, int, str]]
                               ) -> UnsupportedOperatorError:
    """The one-line error naming each operator of ``path`` that the interpreter lacks: ``missing`` maps
    ``"domain:op"`` to ``(op, count, first node name)``."""
    parts = []
    for key, (op, count, first) in sorted(missing.items(), key=lambda kv: (kv[1][0], kv[0])):
        domain = key.rsplit(":", 1)[0]
        where = "" if domain == "ai.onnx" else f"domain {domain}, "
        parts.append(f'{op} ({where}{count}, first at node "{first}")')
    ops = sorted({op for op, _, _ in missing.values()})
    return UnsupportedOperatorError(
        f"{Path(path).name} uses operators the gradient interpreter does not support: {', '.join(parts)}; give "
        "--surrogate (a differentiable model of it: an rkd checkpoint, or an ONNX file of supported operators, "
        "docs/reference/onnx-ops.md) or run black-box attacks only (--attacks square)",
        ops=ops, counts={op: sum(c for o, c, _ in missing.values() if o == op) for op in ops},
        first_nodes={op: next(f for o, _, f in missing.values() if o == op) for op in ops})


def graph_spec(onnx_path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read an ONNX file into ``(spec, tensors)``: the JSON-ready node list and the initializers (raw dtypes).

    ``Constant`` nodes become initializers; tensor-valued attributes of other nodes are stored in ``tensors``
    under ``"<node>::<attr>"``; a node of a domain other than ``ai.onnx`` records it as ``"domain"``.

    Raises:
        UnsupportedOperatorError: operators the interpreter lacks, each named with its count and first node.
        CheckpointError: an unreadable file. UsageError: a missing file, not one image input.
    """
    import onnx
    from onnx import numpy_helper

    path = Path(onnx_path)
    if not path.is_file():
        raise UsageError(f"ONNX file not found: '{path}'")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # DecodeError and friends
        raise CheckpointError(f"cannot read '{path}' as ONNX: {str(exc).strip().splitlines()[0]}") from None
    graph = model.graph
    tensors: dict[str, torch.Tensor] = {}
    for init in graph.initializer:
        tensors[init.name] = torch.from_numpy(np.array(numpy_helper.to_array(init)))
    inputs = [i.name for i in graph.input if i.name not in tensors]
    if len(inputs) != 1 or len(graph.output) < 1:
        raise UsageError(f"'{path}' must have one image input and a logits output; it has inputs {inputs}")
    nodes: list[dict[str, Any]] = []
    missing: dict[str, tuple[str, int, str]] = {}  # "domain:op" -> (op, count, first node)
    for i, node in enumerate(graph.node):
        name = node.name or f"node{i}"
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attrs = {a.name: _attr_value(a, name, tensors) for a in node.attribute}
            tensors[node.output[0]] = _constant_value(attrs, name, tensors)
            continue
        if lookup(node.op_type, node.domain) is None:
            key = f"{domain_name(node.domain)}:{node.op_type}"
            op, count, first = missing.get(key, (node.op_type, 0, name))
            missing[key] = (op, count + 1, first)
            continue
        if missing:
            continue
        attrs = {a.name: _attr_value(a, name, tensors) for a in node.attribute}
        record = {"name": name, "op": node.op_type, "inputs": list(node.input), "outputs": list(node.output),
                  "attrs": attrs}
        if domain_name(node.domain) != "ai.onnx":
            record["domain"] = node.domain
        nodes.append(record)
    if missing:
        raise unsupported_operator_error(path, missing)
    used = {t for n in nodes for t in n["inputs"] if t} | {
        v["__tensor__"] for n in nodes for v in n["attrs"].values() if isinstance(v, dict)}
    tensors = {k: v for k, v in tensors.items() if k in used}
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    spec = {"input": inputs[0], "output": graph.output[0].name, "opset": int(opset), "nodes": nodes}
    return spec, tensors
