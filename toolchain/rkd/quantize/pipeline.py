"""Checkpoint -> INT8 bundle: calibrate on real training images, quantize with ONNX Runtime (QDQ), build the
fake-quant surrogate, and measure float vs INT8 clean and PGD accuracy on the same test images.

The INT8 model is attacked through :class:`rkd.verify.engine_model.EngineModel`: forward value from ONNX Runtime, gradient
from the surrogate (BPDA, ``s(x) + (engine(x) - s(x)).detach()``), so PGD runs against the artifact that
ships, not against the float model. Everything measured goes into the bundle manifest's ``quantize`` section.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rkd.atomic import scratch_dir, sweep_scratch
from rkd.attacks.predictions import batched_classes, predicted_class
from rkd.data import (
    FALLBACK_DATASET,
    Selection,
    fit_to_model,
    indices_sha256,
    load_selection,
    recorded_data,
)
from rkd.data.arrays import ImageArrays
from rkd.data.seeds import derive_seed
from rkd.deploy.bundle import check_replaceable, install_bundle, read_manifest, update_bundle, utc_now
from rkd.deploy.onnx_files import stamp_threat_model
from rkd.errors import DataError, RkdError, UsageError
from rkd.models import load_checkpoint
from rkd.quantize import ort_static
from rkd.quantize.ort_static import METHODS, SCHEMES
from rkd.quantize.surrogate import KIND, agreement, build_surrogate, save_surrogate
from rkd.stats import accuracy_summary
from rkd.verify.engine_model import EngineModel

INT8_NAME = "model.int8.onnx"
PTQ_NAME = "model.int8.ptq.onnx"  # with --qat: the post-training-quantized model QAT started from
SURROGATE_NAME = "surrogate.int8.safetensors"
SURROGATE_SIDECAR = "surrogate.int8.json"
FLOAT_NAME = "model.onnx"
#: The surrogate must agree with the INT8 model on at least this share of clean test images (issue 4).
REQUIRED_AGREEMENT = 0.99
DEBUG_IMAGES = 64
DEFAULT_EPS = 8 / 255
DEFAULT_ALPHA = 2 / 255


def _acc(correct: torch.Tensor) -> dict[str, Any]:
    return accuracy_summary(int(correct.sum()), int(correct.numel()))


def _positive(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def parse_eval_attacks(attacks: str | None) -> int:
    """Steps of the PGD attack named in ``attacks`` (``"pgd20"``); 0 for none (``""``, ``"none"``,
    ``"clean"``).

    Raises:
        UsageError: anything else (rkd quantize measures one PGD attack; the full suite is rkd verify's).
    """
    text = (attacks or "").strip().lower()
    if text in ("", "none", "clean"):
        return 0
    names = [t.strip() for t in text.split(",") if t.strip() and t.strip() != "clean"]
    steps = names[0][3:] if len(names) == 1 and names[0].startswith("pgd") else ""
    if not steps.isdigit() or int(steps) < 1:
        raise UsageError(
            f"eval attacks '{attacks}': rkd quantize measures one PGD attack (e.g. pgd20) or none; run "
            "rkd verify on the bundle for AutoAttack and the full suite"
        )
    from rkd.verify.suite import MAX_STEPS

    if len(steps) > len(str(MAX_STEPS)) or int(steps) > MAX_STEPS:
        raise UsageError(f"eval attacks '{attacks}' asks for {int(steps)} steps; at most {MAX_STEPS:,}")
    return int(steps)


def _load_split(
    name: str, options: dict[str, Any], split: str, data_root: str | None, purpose: str, *, n: int | None,
    sample: str = "first", seed: int = 0, flag: str = "--calib-n", fewer_ok: bool = False,
) -> Selection:
    """``n`` images of ``split`` (:func:`rkd.data.load_selection`: a large image folder decodes only those)."""
    try:
        chosen = load_selection(name, split, n=n, sample=sample, seed=seed, root=data_root, options=options,
                                flag=flag, fewer_ok=fewer_ok)
        data = chosen.data
    except DataError as exc:
        text = str(exc)
        if "[0, 1]" in text:
            text += "; normalisation is inside the model: give raw pixels (uint8, or float in [0, 1])"
        raise DataError(f"{purpose} data '{name}': {text}") from None
    if len(data) == 0:
        raise DataError(f"{purpose} data '{name}' has no {split} images")
    return chosen


def _check_shape(data: ImageArrays, expected: Sequence[Any], purpose: str) -> None:
    chw = tuple(int(d) for d in expected[1:]) if len(expected) == 4 else None
    if chw is not None and data.image_shape != chw:
        raise UsageError(
            f"{purpose} images from '{data.name}' have shape (C, H, W) = {data.image_shape}, the model takes "
            f"{chw}; use the data set the model was trained on"
        )


def _refuse_synthetic(name: str, trained_on: str | None, purpose: str, flag: str) -> None:
    if name == "synthetic" and trained_on != "synthetic":
        raise UsageError(
            f"{flag} synthetic: {purpose} needs real images of the data the model was trained on "
            f"({trained_on or 'unknown'}); synthetic images are allowed only for models trained on the "
            "synthetic data set"
        )


def _bundle_action(checkpoint: Path, bundle: Path, ck_sha: str, *, force: bool) -> str:
    """What ``bundle`` needs before ``checkpoint`` can be quantized into it: ``exported`` (none yet),
    ``re-exported`` (another checkpoint's, or a damaged one, replaced with ``force``) or ``reused``. Changes
    nothing: a (re-)export is built apart and installed only when the whole quantization succeeded.

    Raises:
        UsageError: a folder that is not an rkd bundle (never replaced), another checkpoint's bundle or one
            already quantized, without ``force``.
    """
    if not bundle.exists():
        return "exported"
    if not (bundle / "manifest.json").is_file():
        if not bundle.is_dir() or any(bundle.iterdir()):
            raise UsageError(f"'{bundle}' exists and is not an rkd bundle; choose another --out")
        return "exported"
    check_replaceable(bundle)
    try:
        manifest = read_manifest(bundle, verify=True)
    except RkdError:
        if not force:
            raise
        return "re-exported"
    source = (manifest.get("source") or {}).get("sha256")
    if source != ck_sha:
        if not force:
            raise UsageError(
                f"bundle '{bundle}' was exported from another checkpoint (sha256 {str(source)[:12]}..., "
                f"this one {ck_sha[:12]}...); choose another --out or pass --force to re-export it"
            )
        return "re-exported"
    if FLOAT_NAME not in manifest["files"]:
        raise UsageError(f"bundle '{bundle}' has no {FLOAT_NAME}; re-export it with rkd export --force")
    if INT8_NAME in manifest["files"] and not force:
        raise UsageError(f"bundle '{bundle}' already has {INT8_NAME}; pass --force to quantize it again")
    return "reused"


def _pgd_adv(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int, seed: int,
    batch_size: int,
) -> torch.Tensor:
    """PGD (L-inf, random start, cross-entropy) on every row of ``x``; seeded per call."""
    from rkd.attacks import pgd

    gen = torch.Generator().manual_seed(derive_seed("rkd-quantize-pgd", seed))
    out = [pgd(model, x[i:i + batch_size], y[i:i + batch_size], eps=eps, alpha=alpha, steps=steps,
               start="random", generator=gen).x_adv.detach()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else x.clone()


def _evaluate(
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
        t0 = time.perf_counter()
        f_rob = torch.zeros_like(f_clean)
        idx = f_clean.nonzero().flatten()
        if len(idx):
            x_adv = _pgd_adv(model, x[idx], y[idx], eps=eps, alpha=alpha, steps=steps, seed=seed,
                             batch_size=batch_size)
            f_rob[idx] = batched_classes(model, x_adv, batch_size) == y[idx]
        seconds[f"float_{name}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        q_rob = torch.zeros_like(q_clean)
        idx = q_clean.nonzero().flatten()
        wrapped = EngineModel(engine, surrogate).eval()
        if len(idx):
            x_adv = _pgd_adv(wrapped, x[idx], y[idx], eps=eps, alpha=alpha, steps=steps, seed=seed,
                             batch_size=batch_size)
            q_rob[idx] = predicted_class(engine.predict(x_adv)) == y[idx]
            result["agreement"][name] = agreement(surrogate, engine, x_adv, batch_size=batch_size)
        else:
            result["agreement"][name] = None
        seconds[f"int8_{name}"] = time.perf_counter() - t0
        result["float"][name] = _acc(f_rob)
        result["int8"][name] = _acc(q_rob)
    result["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    return result


def _run_qat(
    model: nn.Module, int8_path: Path, ptq_path: Path, train_set: Selection | None, test: Selection | None,
    teacher: nn.Module | None, *, method: str, epochs: int, lr: float, train_n: int | None,
    attack_steps: int | None, eps: float, alpha: float, steps: int, seed: int, batch_size: int, device: str,
    teacher_path: str | Path | None,
) -> dict[str, Any]:
    """Measure the PTQ model, move it to ``ptq_path``, fine-tune its fake-quant twin and write the QAT model
    to ``int8_path``; returns the ``qat`` section (``after`` is filled in by the caller)."""
    from rkd.config import resolve_device
    from rkd.deploy.runtimes import OnnxRuntime
    from rkd.quantize.qat import train_qat, write_back

    before = None
    if test is not None:
        x, y = test.data.to_float(), test.data.y
        ptq_sur = build_surrogate(int8_path)
        ptq_eval = _evaluate(model, ptq_sur, OnnxRuntime(int8_path, batch_size=batch_size), x, y, eps=eps,
                             alpha=alpha, steps=steps, seed=seed, batch_size=batch_size)
        before = {"int8": ptq_eval["int8"], "surrogate_agreement": ptq_eval["agreement"]}
    int8_path.replace(ptq_path)
    if train_set is None:
        raise UsageError("QAT needs its training images")
    n, train_idx = len(train_set.idx), train_set.idx
    student, info = train_qat(ptq_path, train_set.data, method=method, teacher=teacher,
                              epochs=epochs, lr=lr, steps=attack_steps, eps=eps, alpha=alpha,
                              batch_size=min(batch_size, 128), device=resolve_device(device), seed=seed)
    written = write_back(student, ptq_path, int8_path)
    return {
        "method": method, "method_config": info.pop("method"), "teacher": str(teacher_path) if teacher else None,
        **info, "train_data": {"split": "train", "selection": "random", "n": n,
                               "indices_sha256": indices_sha256(train_idx)},
        "started_from": PTQ_NAME, "write_back": written, "onnx_checker": "passed",
        "measured_on": "ONNX Runtime INT8 (forward) + surrogate gradient, the evaluation images above",
        "before": before, "after": None,
    }


def quantize_checkpoint(
    checkpoint: str | Path,
    bundle: str | Path,
    *,
    profile: str = "cpu",
    calib_data: tuple[str, dict[str, Any]] | None = None,
    calib_n: int = 512,
    data_root: str | None = None,
    method: str = "minmax",
    eval_n: int = 1000,
    eval_data: tuple[str, dict[str, Any]] | None = None,
    eval_attacks: str | None = "pgd20",
    debug_layers: bool = False,
    force: bool = False,
    seed: int = 0,
    nodes_to_exclude: Sequence[str] | None = None,
    batch_size: int = 256,
    qat: bool = False,
    qat_method: str = "adv_path",
    qat_epochs: int = 1,
    qat_lr: float = 0.01,
    qat_teacher: str | Path | None = None,
    qat_train_n: int | None = None,
    qat_steps: int | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Quantize a checkpoint into its bundle: ``model.int8.onnx`` + the surrogate + a manifest section.

    The bundle is created with :func:`rkd.deploy.export.export_bundle` when missing; an existing one must come
    from the same checkpoint (sha256) and have no INT8 model yet, unless ``force`` (which re-exports a foreign
    bundle and replaces an INT8 model). Calibration: ``calib_n`` images drawn at random (seeded) from the
    TRAINING split of ``calib_data``. Quantization: :func:`rkd.quantize.ort_static.quantize_onnx` on the
    bundle's ``model.onnx``. Surrogate: :func:`rkd.quantize.surrogate.build_surrogate`. Evaluation on the
    first ``eval_n`` TEST images of ``eval_data`` (default: the calibration data set): clean and PGD accuracy
    of the float torch model and of the INT8 model (ONNX Runtime forward, surrogate gradient), each with a
    Wilson 95% interval, and surrogate/INT8 top-1 agreement on the clean and adversarial inputs. Files are
    added with :func:`rkd.deploy.bundle.update_bundle` (all or nothing).

    Args:
        checkpoint: the rkd ``.safetensors`` checkpoint.
        bundle: the bundle directory.
        profile: ``"cpu"`` (uint8 asymmetric activations) or ``"trt"`` (symmetric int8 for TensorRT).
        calib_data: ``(dataset, options)`` as from ``rkd.data.parse_data_arg``; ``synthetic`` is refused
            unless the checkpoint was trained on the synthetic data set. None: the data set the checkpoint was
            trained on (as its metadata, and so its bundle's manifest, records it), else CIFAR-10.
        calib_n: number of calibration images.
        data_root: folder of data sets that download.
        method: ``"minmax"``, ``"entropy"`` or ``"percentile"``.
        eval_n: number of test images to evaluate (0 skips the evaluation; agreement is then measured on the
            calibration images).
        eval_data: ``(dataset, options)`` for the evaluation; default: ``calib_data``'s data set.
        eval_attacks: ``"pgd20"`` (any ``pgdK``), or ``None``/``"none"`` for clean only. eps and step size
            come from the checkpoint's threat model (default L-inf 8/255, step 2/255).
        debug_layers: also record the per-layer activation error (``qdq_loss_debug``), worst first.
        force: see above.
        seed: seeds the calibration subset and the PGD random starts.
        nodes_to_exclude: ONNX node names to keep in float.
        batch_size: images per forward pass / attack batch.
        qat: robust quantization-aware training after PTQ (:mod:`rkd.quantize.qat`): the PTQ file is kept as
            ``model.int8.ptq.onnx``, its trainable fake-quant twin is fine-tuned with registry method
            ``qat_method`` (teacher ``qat_teacher`` for methods that distil) for ``qat_epochs`` epochs at
            constant ``qat_lr`` on ``qat_train_n`` training images of ``calib_data`` (seeded; all when None),
            and the weights are written back on the same INT8 grid as ``model.int8.onnx``. The section's
            ``evaluation``/``surrogate`` then describe the QAT model, and ``qat`` holds the PTQ (before) and
            QAT (after) INT8 numbers, measured the same way on the same images.
        qat_steps: attack steps of the QAT method (its default when None).
        device: where QAT trains (``auto``: CUDA when available).

    Returns:
        The manifest's ``quantize`` section.

    Raises:
        UsageError: bad arguments, a foreign or already-quantized bundle without ``force``, synthetic data for
            a real model, images of the wrong shape or range. DataError: unreadable data. CheckpointError: an
            unreadable checkpoint or a corrupt bundle.
    """
    from rkd.deploy.export import data_record, export_bundle

    started = time.perf_counter()
    checkpoint, bundle = Path(checkpoint), Path(bundle)
    if profile not in SCHEMES:
        raise UsageError(f"unknown profile '{profile}'; choose {', '.join(SCHEMES)}")
    if method not in METHODS:
        raise UsageError(f"unknown calibration method '{method}'; choose {', '.join(METHODS)}")
    _positive("--calib-n", calib_n)
    _positive("--eval-n", eval_n, 0)
    _positive("--batch-size", batch_size)
    steps = parse_eval_attacks(eval_attacks)
    teacher_model = None
    if qat:
        from rkd.quantize.qat import needs_teacher

        _positive("--epochs", qat_epochs)
        if qat_train_n is not None:
            _positive("--train-n", qat_train_n)
        if qat_steps is not None:
            _positive("--qat-steps", qat_steps)
        if not qat_lr > 0:
            raise UsageError(f"--qat-lr must be > 0, got {qat_lr!r}")
        if needs_teacher(qat_method):
            if qat_teacher is None:
                raise UsageError(f"--qat with method '{qat_method}' distils from a teacher: pass --teacher "
                                 "CHECKPOINT (or choose a teacher-free --qat-method such as pgd_at)")
            if not Path(qat_teacher).is_file():
                raise UsageError(f"teacher checkpoint not found: '{qat_teacher}'")
            teacher_model, _ = load_checkpoint(qat_teacher, map_location="cpu")
    model, sidecar = load_checkpoint(checkpoint, map_location="cpu")
    if calib_data is None:
        record = data_record(sidecar)
        calib_data = recorded_data(record, split="train", n=calib_n) or (FALLBACK_DATASET, {})
        if eval_data is None:
            eval_data = recorded_data(record, split="test", n=eval_n) or calib_data
    else:  # given: an image folder is decoded at the model's size and crop
        calib_data = (calib_data[0], fit_to_model(calib_data[0], calib_data[1], data_record(sidecar)))
    eval_data = eval_data if eval_data is not None else calib_data
    eval_data = (eval_data[0], fit_to_model(eval_data[0], eval_data[1], data_record(sidecar)))
    ck_sha = str(sidecar.get("sha256"))
    meta = sidecar.get("metadata") or {}
    trained_on = (meta.get("data") or {}).get("dataset") if isinstance(meta, dict) else None
    _refuse_synthetic(calib_data[0], trained_on, "calibration", "--calib-data")
    if teacher_model is not None and teacher_model.spec.num_classes != model.spec.num_classes:
        raise UsageError(f"the teacher has {teacher_model.spec.num_classes} classes, the student "
                         f"{model.spec.num_classes}")
    if eval_n:
        _refuse_synthetic(eval_data[0], trained_on, "evaluation", "--eval-data")
    threat = (meta.get("threat") or {}) if isinstance(meta, dict) else {}
    eps = float(threat.get("eps", DEFAULT_EPS))
    alpha = float(threat.get("alpha", DEFAULT_ALPHA))
    norm = str(threat.get("norm", "linf"))
    if steps and norm != "linf":
        raise UsageError(f"the checkpoint's threat model is {norm}; rkd quantize measures L-inf PGD only")

    calib_set = _load_split(calib_data[0], dict(calib_data[1]), "train", data_root, "calibration", n=calib_n,
                            sample="random", seed=seed)
    qat_set = None
    if qat:  # its own seeded subset of the same training split (all of it without --train-n)
        qat_set = _load_split(calib_data[0], dict(calib_data[1]), "train", data_root, "QAT training",
                              n=qat_train_n, sample="random", seed=derive_seed("rkd-qat-train", seed),
                              flag="--train-n")

    sweep_scratch(bundle.parent, bundle.name)  # what a killed quantize or export left beside the bundle
    bundle_action = _bundle_action(checkpoint, bundle, ck_sha, force=force)
    with contextlib.ExitStack() as cleanup:
        target = bundle
        if bundle_action != "reused":  # export apart; installed only once everything below succeeded
            apart = cleanup.enter_context(scratch_dir(bundle.parent, bundle.name, "export"))
            bundle = apart / bundle.name
            export_bundle(checkpoint, bundle, parity_data=eval_data, data_root=data_root)
        section = _quantize_bundle(
            model, checkpoint, bundle, ck_sha, calib_set, qat_set, eval_data, calib_data, data_root, started,
            profile=profile, method=method, calib_n=calib_n, eval_n=eval_n, steps=steps, seed=seed,
            batch_size=batch_size, device=device, debug_layers=debug_layers, nodes_to_exclude=nodes_to_exclude,
            qat=qat, qat_method=qat_method, qat_epochs=qat_epochs, qat_lr=qat_lr, qat_train_n=qat_train_n,
            qat_steps=qat_steps, qat_teacher=qat_teacher, teacher_model=teacher_model, eps=eps, alpha=alpha,
            bundle_action=bundle_action)
        if bundle != target:
            install_bundle(bundle, target, force=True)
    return section


def _quantize_bundle(
    model: nn.Module, checkpoint: Path, bundle: Path, ck_sha: str, calib_set: Selection,
    qat_set: Selection | None, eval_data: tuple[str, dict[str, Any]], calib_data: tuple[str, dict[str, Any]], data_root: str | None,
    started: float, *, profile: str, method: str, calib_n: int, eval_n: int, steps: int, seed: int,
    batch_size: int, device: str, debug_layers: bool, nodes_to_exclude: Sequence[str] | None, qat: bool,
    qat_method: str, qat_epochs: int, qat_lr: float, qat_train_n: int | None, qat_steps: int | None,
    qat_teacher: str | Path | None, teacher_model: nn.Module | None, eps: float, alpha: float, bundle_action: str,
) -> dict[str, Any]:
    """Quantize the float model of ``bundle`` (a bundle of ``checkpoint``) and add the INT8 files to it."""
    from rkd.deploy.runtimes import OnnxRuntime

    manifest = read_manifest(bundle, verify=True)
    input_shape = manifest["input"]["shape"]
    _check_shape(calib_set.data, input_shape, "calibration")
    calib_idx = calib_set.idx
    calib = calib_set.data.to_float().numpy()
    test = None
    if eval_n:
        test = _load_split(eval_data[0], dict(eval_data[1]), "test", data_root, "evaluation", n=eval_n,
                           fewer_ok=True)
        _check_shape(test.data, input_shape, "evaluation")

    timings: dict[str, float] = {}
    with scratch_dir(bundle.parent, bundle.name, "quantize") as tmp:
        int8_path, sur_path = tmp / INT8_NAME, tmp / SURROGATE_NAME
        t0 = time.perf_counter()
        settings = ort_static.quantize_onnx(bundle / FLOAT_NAME, int8_path, calib, scheme=profile,
                                            method=method, nodes_to_exclude=nodes_to_exclude)
        timings["quantize"] = time.perf_counter() - t0
        qat_section = None
        if qat:
            t0 = time.perf_counter()
            qat_section = _run_qat(
                model, int8_path, tmp / PTQ_NAME, qat_set, test, teacher_model,
                method=qat_method, epochs=qat_epochs, lr=qat_lr, train_n=qat_train_n, attack_steps=qat_steps,
                eps=eps, alpha=alpha, steps=steps, seed=seed, batch_size=batch_size, device=device,
                teacher_path=qat_teacher,
            )
            timings["qat"] = time.perf_counter() - t0
        if manifest.get("threat_model"):  # in the file too, where its sha256 covers it
            stamp_threat_model(int8_path, manifest["threat_model"])
        t0 = time.perf_counter()
        surrogate = build_surrogate(int8_path)
        save_surrogate(surrogate, sur_path)
        timings["surrogate"] = time.perf_counter() - t0
        engine = OnnxRuntime(int8_path, batch_size=batch_size)

        evaluation = None
        if test is not None:
            idx, x, y = test.idx, test.data.to_float(), test.data.y
            t0 = time.perf_counter()
            evaluation = _evaluate(model, surrogate, engine, x, y, eps=eps, alpha=alpha, steps=steps,
                                   seed=seed, batch_size=batch_size)
            timings["evaluate"] = time.perf_counter() - t0
            evaluation = {
                "data": {"dataset": eval_data[0], "options": dict(eval_data[1]), "split": "test",
                         "selection": "first", "n": len(idx), "indices_sha256": indices_sha256(idx),
                         "synthetic": eval_data[0] == "synthetic"},
                "threat_model": {"norm": "linf", "eps": eps, "alpha": alpha, "attack": f"pgd{steps}" if steps
                                 else None, "start": "random", "loss": "ce", "seed": seed},
                "int8_gradient": "surrogate (fake-quant, straight-through); forward: ONNX Runtime INT8",
                **evaluation,
            }
            check = evaluation["agreement"]["clean"]
            check_on = "clean test images"
        else:
            n = min(512, len(calib))
            check = agreement(surrogate, engine, torch.from_numpy(calib[:n]), batch_size=batch_size)
            check_on = "calibration images (train split)"

        layers = None
        if debug_layers:
            t0 = time.perf_counter()
            layers = ort_static.debug_layers(bundle / FLOAT_NAME, int8_path, calib[:DEBUG_IMAGES])
            timings["debug_layers"] = time.perf_counter() - t0

        warnings: list[str] = []
        ok = check["top1_agreement"] >= REQUIRED_AGREEMENT
        if not ok:
            warnings.append(
                f"surrogate/INT8 top-1 agreement {check['top1_agreement']:.2%} on {check_on} is below "
                f"{REQUIRED_AGREEMENT:.0%}: gradient attacks on the INT8 model may be weak"
            )
        sizes = {FLOAT_NAME: (bundle / FLOAT_NAME).stat().st_size, INT8_NAME: int8_path.stat().st_size,
                 SURROGATE_NAME: sur_path.stat().st_size}
        section: dict[str, Any] = {
            "file": INT8_NAME,
            "profile": profile,
            "settings": settings,
            "calibration": {"dataset": calib_data[0], "options": dict(calib_data[1]), "split": "train",
                            "selection": "random", "seed": seed, "n": len(calib_idx),
                            "indices_sha256": indices_sha256(calib_idx),
                            "synthetic": calib_data[0] == "synthetic"},
            "surrogate": {"file": SURROGATE_NAME, "sidecar": SURROGATE_SIDECAR, "kind": KIND,
                          "fake_quant_ops": surrogate.num_fake_quant,
                          "quantized_weights": surrogate.num_quantized_weights,
                          "agreement": check, "agreement_on": check_on,
                          "required_agreement": REQUIRED_AGREEMENT, "ok": ok},
            "evaluation": evaluation,
            "qat": qat_section,
            "debug_layers": layers,
            "sizes": sizes,
            "checkpoint": {"path": str(checkpoint.resolve()), "sha256": ck_sha},
            "bundle_action": bundle_action,
            "warnings": warnings,
            "created": utc_now(),
        }
        if qat_section is not None:
            sizes[PTQ_NAME] = (tmp / PTQ_NAME).stat().st_size
            if evaluation is not None:
                qat_section["after"] = {"int8": evaluation["int8"],
                                        "surrogate_agreement": evaluation["agreement"]}
        timings["total"] = time.perf_counter() - started
        section["seconds"] = {k: round(v, 2) for k, v in timings.items()}
        add = {INT8_NAME: int8_path, SURROGATE_NAME: sur_path, SURROGATE_SIDECAR: tmp / SURROGATE_SIDECAR}
        if qat_section is not None:
            add[PTQ_NAME] = tmp / PTQ_NAME
        # without --qat, a PTQ model left by an earlier QAT run would no longer describe this bundle
        update_bundle(bundle, add=add, sections={"quantize": section}, remove=[PTQ_NAME])
    return section
