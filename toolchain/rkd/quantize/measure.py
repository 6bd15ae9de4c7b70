"""What ``rkd quantize`` measures: float vs INT8 clean and PGD accuracy by rkd's one evaluation core
(:func:`rkd.verify.suite.evaluate_robustness`, the function behind ``rkd eval`` and ``rkd verify``; the INT8 model
attacked through :class:`rkd.verify.engine_model.EngineModel`: ONNX Runtime forward, surrogate gradient, BPDA),
and the QAT step that fine-tunes the PTQ model's fake-quant twin (:mod:`rkd.quantize.qat`) with before/after
numbers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rkd.attacks.predictions import batched_classes, predicted_class
from rkd.data import Selection, indices_sha256
from rkd.errors import UsageError
from rkd.quantize.request import QatOptions
from rkd.quantize.surrogate import agreement, build_surrogate
from rkd.stats import accuracy_summary
from rkd.verify.engine_model import EngineModel

if TYPE_CHECKING:
    from rkd.verify.outcome import RobustnessResult

PTQ_NAME = "model.int8.ptq.onnx"  # with --qat: the post-training-quantized model QAT started from


def _acc(correct: torch.Tensor) -> dict[str, Any]:
    return accuracy_summary(int(correct.sum()), int(correct.numel()))


def _suite(
    model: nn.Module, who: str, x: torch.Tensor, y: torch.Tensor, pred: torch.Tensor, seconds: float, *,
    eps: float, alpha: float, steps: int, seed: int, batch_size: int, keep_adv: bool = False,
) -> RobustnessResult:
    """Clean and PGD-``steps`` accuracy of ``model`` by rkd's evaluation core
    (:func:`rkd.verify.suite.evaluate_robustness`, as ``rkd eval`` and ``rkd verify`` measure: L-inf, random
    start, cross-entropy, each sample's start seeded from ``seed``, only clean-correct samples attacked, the
    final iterate scored). The clean outcome is the given predictions ``pred`` (measured once, also for the
    float/INT8 agreement); progress goes to :func:`rkd.progress.active` as ``<who> pgdK``."""
    from rkd.attacks.predictions import NO_CLASS
    from rkd.progress import labelled
    from rkd.verify.outcome import AttackOutcome
    from rkd.verify.suite import class_counts, evaluate_robustness

    clean = AttackOutcome("clean", pred == y, seconds,
                          {"predicted": class_counts(pred, y), "non_finite": int((pred == NO_CLASS).sum())})
    with labelled(f"{who} "):
        return evaluate_robustness(model, x, y, attacks=f"clean,pgd{steps}" if steps else "clean", eps=eps,
                                   alpha=alpha, seed=seed, batch_size=batch_size, keep_adv=keep_adv,
                                   done={"clean": clean})


def evaluate_int8(
    model: nn.Module, surrogate: nn.Module, engine: Any, x: torch.Tensor, y: torch.Tensor, *, eps: float,
    alpha: float, steps: int, seed: int, batch_size: int,
) -> dict[str, Any]:
    """Clean and PGD accuracy of the float model and the INT8 engine (attacked through
    :class:`~rkd.verify.engine_model.EngineModel`), each by :func:`_suite`, and surrogate/engine agreement on
    the clean images and on the INT8 model's adversarial examples."""
    t0 = time.perf_counter()
    f_pred = batched_classes(model.eval(), x, batch_size)
    t_float = time.perf_counter() - t0
    q_pred = predicted_class(engine.predict(x))
    t_int8 = time.perf_counter() - t0 - t_float
    clean_agreement = agreement(surrogate, engine, x, batch_size=batch_size)
    seconds: dict[str, float] = {"clean": time.perf_counter() - t0}
    attack = {"eps": eps, "alpha": alpha, "steps": steps, "seed": seed, "batch_size": batch_size}
    f_res = _suite(model, "float", x, y, f_pred, t_float, **attack)
    q_res = _suite(EngineModel(engine, surrogate).eval(), "int8", x, y, q_pred, t_int8, keep_adv=True, **attack)
    result: dict[str, Any] = {
        "float": {"clean": _acc(f_res.outcomes["clean"].correct)},
        "int8": {"clean": _acc(q_res.outcomes["clean"].correct)},
        "float_int8_top1_agreement": float((f_pred == q_pred).float().mean()),
        "agreement": {"clean": clean_agreement},
    }
    if steps:
        name = f"pgd{steps}"
        idx = q_res.outcomes["clean"].correct.nonzero().flatten()
        x_adv = q_res.outcomes[name].x_adv
        result["agreement"][name] = (agreement(surrogate, engine, x_adv[idx], batch_size=batch_size)
                                     if len(idx) and x_adv is not None else None)
        seconds[f"float_{name}"] = f_res.outcomes[name].seconds
        seconds[f"int8_{name}"] = q_res.outcomes[name].seconds
        result["float"][name] = _acc(f_res.outcomes[name].correct)
        result["int8"][name] = _acc(q_res.outcomes[name].correct)
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
