"""Checkpoint -> INT8 bundle: calibrate on real training images, quantize with ONNX Runtime (QDQ), build the
fake-quant surrogate, and measure float vs INT8 clean and PGD accuracy on the same test images.

The INT8 model is attacked through :class:`rkd.verify.engine_model.EngineModel`: forward value from ONNX Runtime,
gradient from the surrogate (BPDA, ``s(x) + (engine(x) - s(x)).detach()``), so PGD runs against the artifact that
ships, not against the float model. Everything measured goes into the bundle manifest's ``quantize`` section.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rkd.atomic import scratch_dir, sweep_scratch
from rkd.data import FALLBACK_DATASET, Selection, fit_to_model, indices_sha256, load_selection, recorded_data
from rkd.data.arrays import ImageArrays
from rkd.data.seeds import derive_seed
from rkd.deploy.bundle import check_replaceable, install_bundle, read_manifest, update_bundle, utc_now
from rkd.deploy.onnx_files import stamp_threat_model
from rkd.errors import DataError, RkdError, UsageError
from rkd.models import load_checkpoint
from rkd.quantize import ort_static
from rkd.quantize.measure import PTQ_NAME, evaluate_int8, run_qat
from rkd.quantize.request import DataArg, QuantizeRequest, request_from_kwargs
from rkd.quantize.surrogate import KIND, agreement, build_surrogate, save_surrogate

INT8_NAME = "model.int8.onnx"
SURROGATE_NAME = "surrogate.int8.safetensors"
SURROGATE_SIDECAR = "surrogate.int8.json"
FLOAT_NAME = "model.onnx"
#: The surrogate must agree with the INT8 model on at least this share of clean test images (issue 4).
REQUIRED_AGREEMENT = 0.99
DEBUG_IMAGES = 64
DEFAULT_EPS = 8 / 255
DEFAULT_ALPHA = 2 / 255


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
            "synthetic data set" + ("" if flag.startswith("--") else " (or set eval_n to 0: no evaluation)")
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


@dataclass(frozen=True)
class _Inputs:
    """What a checked request loads before any file is written: models, data, threat model."""

    model: nn.Module
    teacher: nn.Module | None
    ck_sha: str
    calib_set: Selection
    qat_set: Selection | None
    calib_data: DataArg
    eval_data: DataArg
    eps: float
    alpha: float
    steps: int


def quantize_checkpoint(checkpoint: str | Path, bundle: str | Path, **options: Any) -> dict[str, Any]:
    """Quantize a checkpoint into its bundle from flat keywords: :func:`run_quantize` on
    :func:`rkd.quantize.request.request_from_kwargs` (``scheme``, or its old name ``profile``; ``qat=True`` with
    ``qat_method``, ``qat_epochs``, ``qat_lr``, ``qat_teacher``, ``qat_train_n``, ``qat_steps``; the other
    keywords are :class:`~rkd.quantize.request.QuantizeRequest` fields). Returns the manifest's ``quantize``
    section."""
    return run_quantize(request_from_kwargs(checkpoint, bundle, **options))


def _load_inputs(req: QuantizeRequest) -> _Inputs:
    """Load the checkpoint (and a QAT teacher), pick and load the calibration data, read the threat model."""
    from rkd.deploy.export import data_record

    steps = req.eval_steps
    teacher = None
    if req.qat is not None and req.qat.teacher is not None:
        from rkd.quantize.qat import needs_teacher

        if needs_teacher(req.qat.method):
            teacher, _ = load_checkpoint(req.qat.teacher, map_location="cpu")
    model, sidecar = load_checkpoint(req.checkpoint, map_location="cpu")
    calib_data, eval_data = req.calib_data, req.eval_data
    if calib_data is None:
        record = data_record(sidecar)
        calib_data = recorded_data(record, split="train", n=req.calib_n) or (FALLBACK_DATASET, {})
        if eval_data is None:
            eval_data = recorded_data(record, split="test", n=req.eval_n) or calib_data
    else:  # given: an image folder is decoded at the model's size and crop
        calib_data = (calib_data[0], fit_to_model(calib_data[0], calib_data[1], data_record(sidecar)))
    eval_data = eval_data if eval_data is not None else calib_data
    eval_data = (eval_data[0], fit_to_model(eval_data[0], eval_data[1], data_record(sidecar)))
    meta = sidecar.get("metadata") or {}
    trained_on = (meta.get("data") or {}).get("dataset") if isinstance(meta, dict) else None
    _refuse_synthetic(calib_data[0], trained_on, "calibration", "--calib-data")
    if teacher is not None and teacher.spec.num_classes != model.spec.num_classes:
        raise UsageError(f"the teacher has {teacher.spec.num_classes} classes, the student "
                         f"{model.spec.num_classes}")
    if req.eval_n:
        _refuse_synthetic(eval_data[0], trained_on, "evaluation", "eval_data")
    threat = (meta.get("threat") or {}) if isinstance(meta, dict) else {}
    norm = str(threat.get("norm", "linf"))
    if steps and norm != "linf":
        raise UsageError(f"the checkpoint's threat model is {norm}; rkd quantize measures L-inf PGD only")
    calib_set = _load_split(calib_data[0], dict(calib_data[1]), "train", req.data_root, "calibration",
                            n=req.calib_n, sample="random", seed=req.seed)
    qat_set = None
    if req.qat is not None:  # its own seeded subset of the same training split (all of it without --train-n)
        qat_set = _load_split(calib_data[0], dict(calib_data[1]), "train", req.data_root, "QAT training",
                              n=req.qat.train_n, sample="random", seed=derive_seed("rkd-qat-train", req.seed),
                              flag="--train-n")
    return _Inputs(model=model, teacher=teacher, ck_sha=str(sidecar.get("sha256")), calib_set=calib_set,
                   qat_set=qat_set,
                   calib_data=calib_data, eval_data=eval_data, eps=float(threat.get("eps", DEFAULT_EPS)),
                   alpha=float(threat.get("alpha", DEFAULT_ALPHA)), steps=steps)


def run_quantize(request: QuantizeRequest) -> dict[str, Any]:
    """Quantize a checkpoint into its bundle: ``model.int8.onnx`` + the surrogate + a manifest section.

    The bundle is created with :func:`rkd.deploy.export.export_bundle` when missing; an existing one must come
    from the same checkpoint (sha256) and have no INT8 model yet, unless ``force`` (which re-exports a foreign
    bundle and replaces an INT8 model). Calibration: ``calib_n`` images drawn at random (seeded) from the
    TRAINING split of ``calib_data``; ``synthetic`` is refused unless the checkpoint was trained on it.
    Quantization: :func:`rkd.quantize.ort_static.quantize_onnx` (``scheme`` cpu: uint8 asymmetric activations;
    trt: symmetric int8). Surrogate: :func:`rkd.quantize.surrogate.build_surrogate`. Evaluation on the first
    ``eval_n`` TEST images of ``eval_data``: clean and PGD accuracy (eps and step from the checkpoint's threat
    model) of the float model and of the INT8 model (ONNX Runtime forward, surrogate gradient), each with a
    Wilson 95% interval, and surrogate/INT8 agreement. With ``qat``, the PTQ file is kept as
    ``model.int8.ptq.onnx`` and QAT's weights are written back as ``model.int8.onnx``; the ``qat`` section holds
    the PTQ (before) and QAT (after) INT8 numbers. Files are added with :func:`rkd.deploy.bundle.update_bundle`
    (all or nothing).

    Returns:
        The manifest's ``quantize`` section.

    Raises:
        UsageError: bad arguments, a foreign or already-quantized bundle without ``force``, synthetic data for
            a real model, images of the wrong shape or range. DataError: unreadable data. CheckpointError: an
            unreadable checkpoint or a corrupt bundle.
    """
    from rkd.deploy.export import export_bundle

    started = time.perf_counter()
    req = request.validate()
    inputs = _load_inputs(req)
    bundle = req.bundle
    sweep_scratch(bundle.parent, bundle.name)  # what a killed quantize or export left beside the bundle
    bundle_action = _bundle_action(req.checkpoint, bundle, inputs.ck_sha, force=req.force)
    with contextlib.ExitStack() as cleanup:
        if bundle_action != "reused":  # export apart; installed only once everything below succeeded
            apart = cleanup.enter_context(scratch_dir(bundle.parent, bundle.name, "export"))
            bundle = apart / bundle.name
            export_bundle(req.checkpoint, bundle, parity_data=inputs.eval_data, data_root=req.data_root)
        section = _quantize_bundle(req, inputs, bundle, bundle_action, started)
        if bundle != req.bundle:
            install_bundle(bundle, req.bundle, force=True)
    return section


def _eval_images(
    req: QuantizeRequest, inputs: _Inputs, input_shape: Sequence[Any]
) -> tuple[tuple[torch.Tensor, torch.Tensor], Any] | None:
    """``((x, y), idx)`` of the first ``eval_n`` test images; None when ``eval_n`` is 0."""
    if not req.eval_n:
        return None
    test = _load_split(inputs.eval_data[0], dict(inputs.eval_data[1]), "test", req.data_root, "evaluation",
                       n=req.eval_n, fewer_ok=True)
    _check_shape(test.data, input_shape, "evaluation")
    return (test.data.to_float(), test.data.y), test.idx


def _quantize_bundle(
    req: QuantizeRequest, inputs: _Inputs, bundle: Path, bundle_action: str, started: float
) -> dict[str, Any]:
    """Quantize the float model of ``bundle`` (a bundle of the request's checkpoint) and add the INT8 files."""
    from rkd.deploy.runtimes import OnnxRuntime

    manifest = read_manifest(bundle, verify=True)
    _check_shape(inputs.calib_set.data, manifest["input"]["shape"], "calibration")
    calib_idx = inputs.calib_set.idx
    calib = inputs.calib_set.data.to_float().numpy()
    chosen = _eval_images(req, inputs, manifest["input"]["shape"])
    eval_xy, eval_idx = chosen if chosen is not None else (None, None)
    attack = {"eps": inputs.eps, "alpha": inputs.alpha, "steps": inputs.steps, "seed": req.seed,
              "batch_size": req.batch_size}
    timings: dict[str, float] = {}
    with scratch_dir(bundle.parent, bundle.name, "quantize") as tmp:
        int8_path, sur_path = tmp / INT8_NAME, tmp / SURROGATE_NAME
        t0 = time.perf_counter()
        settings = ort_static.quantize_onnx(bundle / FLOAT_NAME, int8_path, calib, scheme=req.scheme,
                                            method=req.method, nodes_to_exclude=list(req.nodes_to_exclude) or None)
        timings["quantize"] = time.perf_counter() - t0
        qat_section = None
        if req.qat is not None:
            t0 = time.perf_counter()
            qat_section = run_qat(inputs.model, int8_path, tmp / PTQ_NAME, inputs.qat_set, eval_xy,
                                  inputs.teacher, req.qat, attack=attack, device=req.device)
            timings["qat"] = time.perf_counter() - t0
        if manifest.get("threat_model"):  # in the file too, where its sha256 covers it
            stamp_threat_model(int8_path, manifest["threat_model"])
        t0 = time.perf_counter()
        surrogate = build_surrogate(int8_path)
        save_surrogate(surrogate, sur_path)
        timings["surrogate"] = time.perf_counter() - t0
        engine = OnnxRuntime(int8_path, batch_size=req.batch_size)
        evaluation = None
        if eval_xy is not None:
            t0 = time.perf_counter()
            evaluation = _evaluation_record(req, inputs, eval_idx, evaluate_int8(
                inputs.model, surrogate, engine, *eval_xy, **attack))
            timings["evaluate"] = time.perf_counter() - t0
            check, check_on = evaluation["agreement"]["clean"], "clean test images"
        else:
            n = min(512, len(calib))
            check = agreement(surrogate, engine, torch.from_numpy(calib[:n]), batch_size=req.batch_size)
            check_on = "calibration images (train split)"
        layers = None
        if req.debug_layers:
            t0 = time.perf_counter()
            layers = ort_static.debug_layers(bundle / FLOAT_NAME, int8_path, calib[:DEBUG_IMAGES])
            timings["debug_layers"] = time.perf_counter() - t0
        section = _section(req, inputs, settings, calib_idx, surrogate, (check, check_on), evaluation, qat_section)
        section.update(debug_layers=layers, bundle_action=bundle_action, created=utc_now(),
                       sizes=_sizes(bundle, tmp, qat_section is not None))
        timings["total"] = time.perf_counter() - started
        section["seconds"] = {k: round(v, 2) for k, v in timings.items()}
        add = {INT8_NAME: int8_path, SURROGATE_NAME: sur_path, SURROGATE_SIDECAR: tmp / SURROGATE_SIDECAR}
        if qat_section is not None:
            add[PTQ_NAME] = tmp / PTQ_NAME
        # without --qat, a PTQ model left by an earlier QAT run would no longer describe this bundle
        update_bundle(bundle, add=add, sections={"quantize": section}, remove=[PTQ_NAME])
    return section


def _sizes(bundle: Path, tmp: Path, qat: bool) -> dict[str, int]:
    sizes = {FLOAT_NAME: (bundle / FLOAT_NAME).stat().st_size, INT8_NAME: (tmp / INT8_NAME).stat().st_size,
             SURROGATE_NAME: (tmp / SURROGATE_NAME).stat().st_size}
    if qat:
        sizes[PTQ_NAME] = (tmp / PTQ_NAME).stat().st_size
    return sizes


def _evaluation_record(req: QuantizeRequest, inputs: _Inputs, idx: Any, measured: dict[str, Any]) -> dict[str, Any]:
    """The section's ``evaluation``: what was measured on which images, under which threat model."""
    name, options = inputs.eval_data
    return {
        "data": {"dataset": name, "options": dict(options), "split": "test", "selection": "first", "n": len(idx),
                 "indices_sha256": indices_sha256(idx), "synthetic": name == "synthetic"},
        "threat_model": {"norm": "linf", "eps": inputs.eps, "alpha": inputs.alpha,
                         "attack": f"pgd{inputs.steps}" if inputs.steps else None, "start": "random", "loss": "ce",
                         "seed": req.seed},
        "int8_gradient": "surrogate (fake-quant, straight-through); forward: ONNX Runtime INT8",
        **measured,
    }


def _section(
    req: QuantizeRequest, inputs: _Inputs, settings: dict[str, Any], calib_idx: Any, surrogate: Any,
    checked: tuple[dict[str, Any], str], evaluation: dict[str, Any] | None, qat_section: dict[str, Any] | None,
) -> dict[str, Any]:
    """The manifest's ``quantize`` section (sizes, debug layers, timings are added by the caller)."""
    check, check_on = checked
    warnings: list[str] = []
    ok = check["top1_agreement"] >= REQUIRED_AGREEMENT
    if not ok:
        warnings.append(
            f"surrogate/INT8 top-1 agreement {check['top1_agreement']:.2%} on {check_on} is below "
            f"{REQUIRED_AGREEMENT:.0%}: gradient attacks on the INT8 model may be weak"
        )
    if qat_section is not None and evaluation is not None:
        qat_section["after"] = {"int8": evaluation["int8"], "surrogate_agreement": evaluation["agreement"]}
    name, options = inputs.calib_data
    return {
        "file": INT8_NAME,
        "profile": req.scheme,
        "settings": settings,
        "calibration": {"dataset": name, "options": dict(options), "split": "train", "selection": "random",
                        "seed": req.seed, "n": len(calib_idx), "indices_sha256": indices_sha256(calib_idx),
                        "synthetic": name == "synthetic"},
        "surrogate": {"file": SURROGATE_NAME, "sidecar": SURROGATE_SIDECAR, "kind": KIND,
                      "fake_quant_ops": surrogate.num_fake_quant,
                      "quantized_weights": surrogate.num_quantized_weights,
                      "agreement": check, "agreement_on": check_on,
                      "required_agreement": REQUIRED_AGREEMENT, "ok": ok},
        "evaluation": evaluation,
        "qat": qat_section,
        "debug_layers": None,
        "sizes": {},
        "checkpoint": {"path": str(req.checkpoint.resolve()), "sha256": inputs.ck_sha},
        "bundle_action": None,
        "warnings": warnings,
        "created": None,
    }
