"""The ONNX side of a TensorRT build: reading the file, telling a QDQ file from a float one, and the float16
conversion of the ``fp16`` precision (``onnxruntime.transformers.float16``), nodes kept in topological order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rkd.errors import UsageError

FP16_CONVERSION = (
    "onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True): float16 weights and "
    "activations inside, float32 input and output"
)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _load_onnx(onnx_path: Path, data: bytes) -> Any:
    import onnx

    try:
        return onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf DecodeError and friends
        raise UsageError(
            f"'{onnx_path}' is not an ONNX model ({_one_line(str(exc)) or type(exc).__name__})"
        ) from None


def has_quantize_linear(model: Any) -> bool:
    """Whether an ONNX ``ModelProto`` holds QuantizeLinear nodes (a QDQ file, explicit quantization)."""
    import onnx

    def walk(graph: Any) -> bool:
        for node in graph.node:
            if node.op_type == "QuantizeLinear":
                return True
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH and walk(attr.g):
                    return True
                if attr.type == onnx.AttributeProto.GRAPHS and any(walk(g) for g in attr.graphs):
                    return True
        return False

    return walk(model.graph)


def convert_to_fp16(model: Any) -> Any:
    """The float ONNX model with float16 weights and activations and float32 input/output (see module doc).

    The converter appends its input/output Casts at the end of the node list; the nodes are put back in
    topological order (what the ONNX checker requires) before the model is handed to TensorRT.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(model, keep_io_types=True)
    _topological_sort(converted.graph)
    return converted


def _topological_sort(graph: Any) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs (stable otherwise)."""
    import onnx

    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                copy = onnx.NodeProto()
                copy.CopyFrom(node)
                ordered.append(copy)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = sorted({n for node in rest for n in node.input if n not in available})
            raise UsageError(f"the float16 graph has inputs no node produces: {', '.join(missing[:5])}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def checked_onnx(onnx_path: Path, precision: str) -> tuple[bytes, bytes]:
    """The file's bytes and the bytes to build from (float16 inside for ``fp16``). A float file for ``int8`` or a
    QDQ file for ``fp16``/``fp32`` is a :class:`~rkd.errors.UsageError`."""
    if not onnx_path.is_file():
        raise UsageError(f"ONNX file not found: '{onnx_path}'")
    data = onnx_path.read_bytes()
    model = _load_onnx(onnx_path, data)
    quantized = has_quantize_linear(model)
    if precision == "int8" and not quantized:
        raise UsageError(
            f"'{onnx_path}' has no QuantizeLinear nodes, so it cannot give an INT8 engine (TensorRT 10/11 "
            "take INT8 only from explicit Q/DQ): quantize first: rkd quantize"
        )
    if precision != "int8" and quantized:
        raise UsageError(
            f"'{onnx_path}' is a quantized (QDQ) model; build it with precision 'int8', or pass the float "
            f"model.onnx for {precision}"
        )
    return data, (convert_to_fp16(model).SerializeToString() if precision == "fp16" else data)
