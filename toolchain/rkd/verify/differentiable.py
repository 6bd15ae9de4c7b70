"""A model file as a differentiable torch module: what ``rkd verify`` takes gradients from (a surrogate or a
float reference) and how it describes it.

An ONNX file (float, QDQ or QOperator) is interpreted in torch (:mod:`rkd.quantize.surrogate`), an rkd checkpoint
loads as it is, and a plain state_dict loads into a registered or library architecture (never unpickled).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from rkd.deploy.adapters import Preprocessing
from rkd.deploy.runtimes import CHECKPOINT_SUFFIXES, ONNX_SUFFIXES
from rkd.errors import CheckpointError, UsageError


def is_integer_graph(path: Path) -> bool:
    """Whether the ONNX file holds integer (QDQ or QOperator) operators; an unreadable file is a CheckpointError."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise CheckpointError(
            f"cannot read ONNX file '{path}': {str(exc).splitlines()[0] if str(exc) else exc}") from None
    return any(node.op_type in _INTEGER_OPS for node in model.graph.node)


#: Operators that make an ONNX graph an integer (quantized) one: QDQ and ONNX Runtime's QOperator format.
_INTEGER_OPS = frozenset({"QuantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                          "ConvInteger", "MatMulInteger"})


#: How the ONNX interpreter differentiates what has no useful derivative; every report that uses it says so.
INTERPRETER_GRADIENTS = (
    "rounding (QuantizeLinear/DequantizeLinear pairs, the re-quantization of QLinear* outputs, Round, Floor, "
    "Ceil): straight-through, the identity inside the quantized range and zero where it saturates; a Cast to "
    "an integer type: no gradient (such samples count as zero gradients)"
)


def load_differentiable(path: str | Path, device: str | torch.device = "cpu", *,
                        preprocessing: Preprocessing | None = None, model: str | None = None,
                        num_classes: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A model file as a differentiable module in eval mode taking [0, 1] RGB NCHW images, with a description
    (file, sha256, kind, and for an ONNX file how its gradients are taken).

    - an ONNX file (float, QDQ or QOperator): interpreted in torch, behind ``preprocessing``;
    - an rkd checkpoint (``.safetensors`` + sidecar): as it is (it normalises its own input);
    - with ``model`` (a registered architecture such as ``tv_mobilenet_v2``): a plain state_dict from
      torchvision, timm-style or RobustBench code (:func:`rkd.models.load_foreign_checkpoint`, never unpickled)
      with ``num_classes`` outputs and the normalisation ``preprocessing`` states (or the architecture's default);
    - with ``model`` ``timm:NAME`` or ``torchvision:NAME``: that library's architecture, built without download,
      with the state_dict loaded strictly (:func:`rkd.models.library.load_library_model`), behind the same
      normalisation.

    Raises:
        UsageError: a missing file or one that cannot give gradients.
        UnsupportedOperatorError: an ONNX file with operators the interpreter cannot differentiate.
    """
    from rkd.deploy.adapters import AdaptedModule
    from rkd.deploy.onnx_files import onnx_fingerprint

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"file not found: '{path}'")
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        from rkd.quantize.surrogate import onnx_module

        module: nn.Module = onnx_module(path)
        kind = ("onnx-qdq-interpreter" if module.num_fake_quant else
                "onnx-int8-interpreter" if is_integer_graph(path) else "onnx-interpreter")
        fingerprint = onnx_fingerprint(path)  # with external data: its files too
        if preprocessing is not None:
            module = AdaptedModule(module, preprocessing)
        return module.to(device).eval(), {"file": str(path), "sha256": fingerprint["sha256"], "kind": kind,
                                          "gradients": INTERPRETER_GRADIENTS,
                                          **({"external_data": fingerprint["external_data"]}
                                             if fingerprint["external_data"] else {})}
    if model is not None:
        from rkd.atomic import file_sha256
        from rkd.models import load_foreign_checkpoint
        from rkd.models.library import load_library_model, parse_model_spec

        if num_classes is None:
            raise UsageError(f"--reference-model {model}: the number of classes is unknown; write it as {model}:N")
        spec = parse_model_spec(model)
        mean = std = None
        if preprocessing is not None and not (preprocessing.mean == (0.0, 0.0, 0.0)
                                              and preprocessing.std == (1.0, 1.0, 1.0)):
            order = slice(None, None, -1) if preprocessing.channels == "bgr" else slice(None)
            mean = [v / preprocessing.scale for v in preprocessing.mean][order]
            std = [v / preprocessing.scale for v in preprocessing.std][order]
        if spec.library is not None:  # timm:NAME, torchvision:NAME
            clf = load_library_model(path, spec, num_classes, mean=mean, std=std, map_location=device)
            name = f"{spec.library}:{spec.name}"
        else:
            clf = load_foreign_checkpoint(path, model=spec.name, num_classes=num_classes, mean=mean, std=std,
                                          map_location=device)
            name = spec.name
        return clf.eval(), {"file": str(path), "sha256": file_sha256(path), "kind": f"state_dict ({name})"}
    if suffix in CHECKPOINT_SUFFIXES:
        from rkd.models import load_checkpoint

        model_, sidecar = load_checkpoint(path, map_location=device)
        return model_.eval(), {"file": str(path), "sha256": sidecar.get("sha256"), "kind": "checkpoint"}
    raise UsageError(f"'{path}' cannot give gradients: use an rkd checkpoint (.safetensors), an ONNX file, or a "
                     "plain state_dict with --reference-model NAME")
