"""What ``rkd quantize`` measures: float vs INT8 clean and PGD accuracy (the INT8 model attacked through
:class:`rkd.verify.engine_model.EngineModel`: ONNX Runtime forward, surrogate gradient, BPDA), and the QAT step
that fine-tunes the PTQ model's fake-quant twin (:mod:`rkd.quantize.qat`) with before/after numbers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rkd.attacks.predictions import batched_classes, predicted_class
from rkd.data import Selection, indices_sha256
from rkd.data.seeds import derive_seed
from rkd.errors import UsageError
from rkd.quantize.request import QatOptions
from rkd.quantize.surrogate import agreement, build_surrogate
from rkd.stats import accuracy_summary
from rkd.verify.engine_model import EngineModel

PTQ_NAME = "model.int8.ptq.onnx"  # with --qat: the post-training-quantized model QAT started from


def _acc(correct: torch.Tensor) -> dict[str, Any]:
    return accuracy_summary(int(correct.sum()), int(correct.numel()))


def _pgd_adv(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int, seed: int,
    batch_size: int, label: str = "pgd",
) -> torch.Tensor:
    """PGD (L-inf, random start, cross-entropy) on every row of ``x``; seeded per call. Progress (samples done,
    robust so far: one more forward per batch) goes to :func:`rkd.progress.active` as ``<label> pgdK``."""
    from rkd.attacks import pgd
    from rkd.progress import unit

    gen = torch.Generator().manual_seed(derive_seed("rkd-quantize-pgd", seed))
    out: list[torch.Tensor] = []
    robust = 0
    with unit(f"{label} pgd{steps}", len(x)) as sink:
        for i in range(0, len(x), batch_size):
            out.append(pgd(model, x[i:i + batch_size], y[i:i + batch_size], eps=eps, alpha=alpha, steps=steps,
                           start="random", generator=gen).x_adv.detach())
            robust += int((batched_classes(model, out[-1], batch_size) == y[i:i + batch_size].cpu()).sum())
            sink.advance(min(i + batch_size, len(x)), robust)
    return torch.cat(out) if out else x.clone()


def evaluate_int8(
    model: nn.Module, surrogate: nn.Module, engine: Any, x: torch.Tensor, y: torch.Tensor, *, eps: float,
    alpha: float, steps: int, seed: int, batch_size: int,
) -> dict[str, Any]:
    """Clean and PGD accuracy of the float model and the INT8 engine, and surrogate/engine agreement."""
    t0 = time.perf_counter()
    f_pred = batched_classes(model.eval(), x, batch_size)
    q_pred = predicted_class(engine.predict(x))
    f_clean, q_clean = f_pred == y, q_pred == y
    result: dict[str, Any] = {
        "float": {"clean": _acc(f_clean)}, "int8": {"clean": _acc(q_clean)},
        "float_int8_top1_agreement": float((f_pred == q_pred).float().mean()),
        "agreement": {"clean": agreement(surrogate, engine, x, batch_size=batch_size)},
    }
    seconds: dict[str, float] = {"clean": time.perf_counter() - t0}
    if steps:
        name = f"pgd{steps}"
        attack = {"eps": eps, "alpha": alpha, "steps": steps, "seed": seed, "batch_size": batch_size}
        t0 = time.perf_counter()
        f_rob = torch.zeros_like(f_clean)
        idx = f_clean.nonzero().flatten()
        if len(idx):
            x_adv = _pgd_adv(model, x[idx], y[idx], **attack, label="float")
            f_rob[idx] = batched_classes(model, x_adv, batch_size) == y[idx]
        seconds[f"float_{name}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        q_rob = torch.zeros_like(q_clean)
        idx = q_clean.nonzero().flatten()
        wrapped = EngineModel(engine, surrogate).eval()
        result["agreement"][name] = None
        if len(idx):
            x_adv = _pgd_adv(wrapped, x[idx], y[idx], **attack, label="int8")
            q_rob[idx] = predicted_class(engine.predict(x_adv)) == y[idx]
            result["agreement"][name] = agreement(surrogate, engine, x_adv, batch_size=batch_size)
        seconds[f"int8_{name}"] = time.perf_counter() - t0
        result["float"][name] = _acc(f_rob)
        result["int8"][name] = _acc(q_rob)
    result["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    return result


def run_qat(
    model: nn.Module, int8_path: Path, ptq_path: Path, train_set: Selection | None, eval_xy: Any,
    teacher: nn.Module | None, options: QatOptions, *, attack: dict[str, Any], device: str,
) -> dict[str, Any]:
    """Measure the PTQ model on ``eval_xy`` (``(x, y)`` or None), move it to ``ptq_path``, fine-tune its
    fake-quant twin with ``options`` and write the QAT model to ``int8_path``; returns the ``qat`` section
    (``after`` is filled in by the caller). ``attack``: eps, alpha, steps, seed, batch_size of the measurement."""
    from rkd.config import resolve_device
    from rkd.deploy.runtimes import OnnxRuntime
    from rkd.quantize.qat import QatTraining, train_qat, write_back

    seed, batch_size = attack["seed"], attack["batch_size"]
    before = None
    if eval_xy is not None:
        ptq_eval = evaluate_int8(model, build_surrogate(int8_path), OnnxRuntime(int8_path, batch_size=batch_size),
                                 *eval_xy, **attack)
        before = {"int8": ptq_eval["int8"], "surrogate_agreement": ptq_eval["agreement"]}
    int8_path.replace(ptq_path)
    if train_set is None:
        raise UsageError("QAT needs its training images")
    n, train_idx = len(train_set.idx), train_set.idx
    training = QatTraining(options=options, teacher=teacher, eps=attack["eps"], alpha=attack["alpha"],
                           batch_size=min(batch_size, 128))
    student, info = train_qat(ptq_path, train_set.data, training, device=resolve_device(device), seed=seed)
    written = write_back(student, ptq_path, int8_path)
    return {
        "method": options.method, "method_config": info.pop("method"),
        "teacher": str(options.teacher) if teacher else None,
        **info, "train_data": {"split": "train", "selection": "random", "n": n,
                               "indices_sha256": indices_sha256(train_idx)},
        "started_from": PTQ_NAME, "write_back": written, "onnx_checker": "passed",
        "measured_on": "ONNX Runtime INT8 (forward) + surrogate gradient, the evaluation images above",
        "before": before, "after": None,
    }
