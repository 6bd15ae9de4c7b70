"""``rkd eval``: the robustness suite on a checkpoint and a fixed, hashed set of test samples."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from rkd.data import fit_to_model
from rkd.environment import device_description, package_versions
from rkd.errors import CheckpointError, UsageError
from rkd.verify.samples import load_samples
from rkd.verify.suite import check_suite, evaluate_robustness, parse_attacks

REPORT_SCHEMA_VERSION = 1


@dataclass
class EvalRequest:
    """What to evaluate: data, samples, threat model and attacks."""

    dataset: str = "cifar10"
    data_options: dict[str, Any] | None = None
    data_root: str | None = None
    split: str = "test"
    n: int | None = 1000
    sample: str = "first"  # first | random (seeded)
    attacks: str = "clean,fgsm,pgd20,cw,autoattack"
    eps: float = 8 / 255
    eps_text: str = "8/255"
    alpha: float = 2 / 255
    norm: str = "linf"
    seed: int = 0
    batch_size: int = 256
    device: str = "cpu"
    autoattack_state: str | None = None


def evaluate_model(
    model: nn.Module,
    request: EvalRequest,
    *,
    model_info: dict[str, Any] | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Evaluate ``model`` as ``request`` says and return the JSON report (RobustBench names at the top level).

    ``model_info`` (:func:`load_model_for_eval`'s) goes into the report; its ``trained_on`` (the checkpoint's
    data record) decodes an image folder at the model's input size and crop (:func:`rkd.data.fit_to_model`).
    """
    t0 = time.perf_counter()
    specs = parse_attacks(request.attacks)
    check_suite(specs, seed=request.seed)  # before any data or model call
    options = fit_to_model(request.dataset, request.data_options, (model_info or {}).get("trained_on"))
    samples = load_samples(request.dataset, request.split, n=request.n, sample=request.sample, seed=request.seed,
                           root=request.data_root, options=options,
                           num_classes=getattr(getattr(model, "spec", None), "num_classes", None))
    x, y = samples.x, samples.y
    model = model.to(request.device).eval()
    result = evaluate_robustness(
        model, x, y, attacks=specs, eps=request.eps, alpha=request.alpha,
        norm=request.norm, batch_size=request.batch_size, seed=request.seed, device=request.device,
        autoattack_state=request.autoattack_state, log=log,
    )
    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "kind": "rkd-eval",
        **result.to_dict(),
        "by_class": result.by_class(samples.classes),
        "eps_text": request.eps_text,
        "alpha": request.alpha,
        "data": {**samples.record(), "options": dict(options)},
        "model": model_info or {},
        "batch_size": request.batch_size,
        "timing": {"total_s": time.perf_counter() - t0},
        "versions": package_versions(),
        "device": device_description(request.device),
    }
    return report


def load_model_for_eval(
    checkpoint: str | Path,
    *,
    model: str | None = None,
    num_classes: int | None = None,
    width: float = 1.0,
    depth: int | None = None,
    widen_factor: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load an rkd checkpoint (safetensors + sidecar), or a foreign state_dict when ``model`` is given."""
    from rkd.models import load_checkpoint, load_foreign_checkpoint

    path = Path(checkpoint)
    if model is None:
        given = [flag for flag, value in (("--num-classes", num_classes), ("--width", None if width == 1.0 else width),
                                           ("--depth", depth), ("--widen-factor", widen_factor), ("--mean", mean),
                                           ("--std", std)) if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)} describe a foreign state_dict (with --model); an rkd checkpoint "
                             "records its own architecture and normalisation: drop them")
        from rkd.deploy.export import data_record

        net, sidecar = load_checkpoint(path)
        info = {"checkpoint": str(path), "sha256": sidecar.get("sha256"), **sidecar.get("model", {})}
        trained_on = data_record(sidecar)
        if trained_on is not None:
            info["trained_on"] = trained_on
        return net, info
    if num_classes is None:
        raise CheckpointError("--num-classes is required with --model (a foreign state_dict does not record it)")
    kwargs: dict[str, Any] = {"model": model, "num_classes": num_classes, "width": width,
                              "depth": depth, "widen_factor": widen_factor}
    if mean is not None:
        kwargs["mean"] = mean
    if std is not None:
        kwargs["std"] = std
    net = load_foreign_checkpoint(path, **kwargs)
    return net, {"checkpoint": str(path), "foreign": True, **net.spec.to_dict()}

