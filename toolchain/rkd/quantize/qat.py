"""Robust quantization-aware training (``rkd quantize --qat``): fine-tune the INT8 model's fake-quant twin with a
distillation method from the registry, then write the new weights back into the QDQ file.

Design: PTQ (:mod:`rkd.quantize.ort_static`) fixes the graph and every scale (activations from calibration,
weights per channel). :func:`build_qat_student` interprets that QDQ file with
:class:`rkd.quantize.surrogate.OnnxGraphModule` (``trainable=True``): weights and biases are trainable float
parameters initialised from the dequantized integer initializers and fake-quantized on every forward with the
file's own scales (straight-through); activations are fake-quantized with the file's fixed scales. It takes
images in [0, 1] and returns logits, like any student, so :func:`rkd.train.loop.fit` trains it with any
registered method. :func:`write_back` then re-quantizes the weights onto the SAME grid
(``clamp(round(w / scale) + zero_point)``) into a copy of the QDQ file, so the result is still a valid QDQ model
that ONNX Runtime runs, with the same scales; it is checked with ``onnx.checker``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rkd.data.arrays import ImageArrays
from rkd.errors import CheckpointError, UsageError
from rkd.quantize.request import QatOptions
from rkd.quantize.surrogate import OnnxGraphModule, build_surrogate

DEFAULT_METHOD = QatOptions.method
DEFAULT_LR = QatOptions.lr


@dataclass(frozen=True)
class QatTraining:
    """What :func:`train_qat` trains with, besides the data, the file and the device: the request's QAT
    ``options`` (``method``, ``epochs``, ``lr``, attack ``steps``; its ``teacher`` path and ``train_n`` are
    for the caller, which loads the teacher and picks the images), the loaded ``teacher`` module (for a method
    that distils), the checkpoint's threat model (``eps``, ``alpha``), ``batch_size`` and ``augment``."""

    options: QatOptions = field(default_factory=QatOptions)
    teacher: torch.nn.Module | None = None
    eps: float = 8 / 255
    alpha: float = 2 / 255
    batch_size: int = 128
    augment: bool = True


def build_qat_student(int8_onnx: str | Path) -> OnnxGraphModule:
    """The trainable fake-quant student of the QDQ file ``int8_onnx`` (see the module docstring)."""
    student = build_surrogate(int8_onnx, trainable=True)
    if not student.weight_keys:
        raise UsageError(f"'{int8_onnx}' has no quantized weight initializers: nothing to train")
    return student


def write_back(student: OnnxGraphModule, src_onnx: str | Path, dst_onnx: str | Path) -> dict[str, Any]:
    """Write ``student``'s weights, re-quantized with the file's scales, into a copy of ``src_onnx``.

    Returns ``{"initializers": n, "changed": n_changed}``.

    Raises:
        CheckpointError: an initializer missing from the file, or a result that fails ``onnx.checker``.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src_onnx))
    by_name = {init.name: init for init in model.graph.initializer}
    changed = 0
    weights = student.quantized_weights()
    for name, q in weights.items():
        init = by_name.get(name)
        if init is None:
            raise CheckpointError(f"QAT write-back: initializer '{name}' not found in '{src_onnx}'")
        old = numpy_helper.to_array(init)
        new = q.numpy().astype(old.dtype).reshape(old.shape)
        changed += int((new != old).any())
        init.CopyFrom(numpy_helper.from_array(new, name))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise CheckpointError(f"QAT model fails onnx.checker: {str(exc).splitlines()[0]}") from None
    onnx.save(model, str(dst_onnx))
    return {"initializers": len(weights), "changed": changed}


def method_config(name: str, *, steps: int | None, eps: float, alpha: float) -> Any:
    """The registry method ``name``'s default config with the threat model's eps/step and ``steps``."""
    from pydantic import TypeAdapter, ValidationError

    from rkd.config import DistillMethodConfig

    needs_teacher(name)  # unknown names fail here
    raw: dict[str, Any] = {"name": name, "eps": eps, "alpha": alpha}
    if steps is not None:
        raw["steps"] = steps
    try:
        return TypeAdapter(DistillMethodConfig).validate_python(raw)
    except ValidationError as exc:
        raise UsageError(f"--method {name}: {str(exc).splitlines()[0]} ({exc.errors()[0]['msg']})") from None


def needs_teacher(name: str) -> bool:
    """Whether registry method ``name`` distils from a teacher (UsageError for an unknown name)."""
    from rkd.distill import METHODS

    return bool(METHODS.get(name).needs_teacher)


def train_qat(
    int8_onnx: str | Path, train_data: ImageArrays, training: QatTraining, *, device: str = "cpu",
    seed: int = 0,
) -> tuple[OnnxGraphModule, dict[str, Any]]:
    """Fine-tune the trainable fake-quant student of ``int8_onnx`` with the registry method of
    ``training.options`` via ``fit``.

    SGD (momentum 0.9, weight decay 0), constant ``lr``, ``epochs`` passes over ``train_data``; no held-out
    evaluation (rkd quantize measures the INT8 model itself afterwards). Returns ``(student, info)``.
    """
    from rkd.config import ThreatConfig, TrainConfig
    from rkd.distill import create_method
    from rkd.seeding import seed_everything
    from rkd.train.loop import fit

    opts, teacher = training.options, training.teacher
    method, eps, alpha = opts.method, training.eps, training.alpha
    if needs_teacher(method) and teacher is None:
        raise UsageError(f"--qat with method '{method}' distils from a teacher: pass --teacher CHECKPOINT")
    seed_everything(seed)
    student = build_qat_student(int8_onnx)
    config = method_config(method, steps=opts.steps, eps=eps, alpha=alpha)
    algo = create_method(config, student=student, teacher=teacher if needs_teacher(method) else None)
    cfg = TrainConfig(epochs=opts.epochs, lr=opts.lr, schedule="constant", weight_decay=0.0, amp="off",
                      channels_last="off", eval_every=0, eval_n=0, log_every=50)
    batch = min(training.batch_size, len(train_data))
    with tempfile.TemporaryDirectory(prefix=".rkd-qat-") as run_dir:
        result = fit(algo, train_data, None, cfg, run_dir=run_dir, device=device, batch_size=batch,
                     threat=ThreatConfig(eps=eps, alpha=alpha), fingerprint=f"qat:{method}",
                     augment=training.augment, seed=seed, save_model=False)
    student = student.cpu().eval()
    info = {"method": config.model_dump(), "epochs": opts.epochs, "lr": opts.lr, "schedule": "constant",
            "optimizer": "sgd momentum 0.9, weight decay 0", "batch_size": batch, "train_n": len(train_data),
            "steps_per_epoch": len(train_data) // batch, "seconds": round(result.seconds, 2),
            "trained_weights": len(student.weight_keys)}
    return student, info
