"""``rkd verify``: adversarial robustness of the artifact that ships, measured on the artifact itself.

Semantics (DESIGN.md, "Verification semantics"): a sample counts as robust on the engine only if the engine
classifies it correctly on the clean input and on every adversarial input from

- white-box attacks (FGSM, PGD-k with restarts, CW-inf, AutoAttack's APGD-CE/APGD-T/FAB-T) run through
  :class:`~rkd.verify.engine_model.EngineModel` (forward value from the engine, gradient from the surrogate),
- Square, which only queries the engine (no gradients at all), and
- transfer: every adversarial example of the float reference's own attacks, fed to the engine.

Beside the engine's numbers: the float reference's on the same samples and the drops, engine/surrogate top-1
agreement on clean and adversarial inputs, and warnings in the spirit of AutoAttack's checks (Square or
transfer breaking what the gradient attacks could not = gradient masking or a weak surrogate; zero
gradients; low agreement). AutoAttack runs only on samples still robust after the cheaper attacks before it
(same worst case, less work; its row is then cumulative and says so). FGSM, PGD and CW count every iterate
whose engine logits misclassify (``score_every_iterate``); non-finite logits count as wrong. A run that could not
fail (no gate) is refused when ``require_gates`` is set (the CLI without ``--no-gates``); so is a gate set
without a floor on robust accuracy (:func:`~rkd.verify.gates.is_floor`) unless ``allow_no_floor`` is set, and the
report then says that its gates cannot fail for a non-robust model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rkd.data import indices_sha256, samples_sha256
from rkd.environment import device_description, package_versions
from rkd.progress import labelled
from rkd.stats import wilson_interval
from rkd.verify.attack_spec import GRADIENT_KINDS, AttackSpec, parse_attacks
from rkd.verify.checks import (  # noqa: F401  (check_gates_measurable: also used by rkd run before it trains)
    TRANSFER,
    check_class_names,
    check_gates_measurable,
    check_input_shape,
    check_judged,
    check_output_widths,
    check_request,
    check_threat_model,
)
from rkd.verify.diagnostics import (
    Diagnostics,
    diagnose,
    float_agreement,
    unreliable_reasons,
    warnings,
    white_box_record,
)
from rkd.verify.engine_model import EngineModel
from rkd.verify.gates import NO_FLOOR_NOTE, evaluate_gates, is_floor
from rkd.verify.outcome import RobustnessResult
from rkd.verify.request import (  # noqa: F401  (re-exported: the request is part of this module's interface)
    DEFAULT,
    DEFAULT_ATTACKS,
    GIVEN,
    MIN_ADVERSARIAL_AGREEMENT,
    MIN_CLEAN_AGREEMENT,
    RECORDED,
    VerifyRequest,
    request_from_config,
    resolve_against,
)
from rkd.verify.samples import SampleSet, load_samples
from rkd.verify.state import VerifyState
from rkd.verify.suite import evaluate_robustness
from rkd.verify.target import VerifyTarget, open_target
from rkd.verify.transfer import run_transfer

REPORT_SCHEMA_VERSION = 1
UNRELIABLE_NOTE = ("the gradient attacks could not be trusted on this artifact and the suite has no gradient-free "
                   "attack: a judged run does not pass (verdict 'unreliable', exit 5); add 'square' or 'autoattack' "
                   "to --attacks, or fix the surrogate")
SEMANTICS = ("robust = correct on the clean input and on every attack's output (white-box through the surrogate, "
             "Square on the engine, transfer from the float reference)")


@dataclass
class VerifyReport:
    """What one verify run measured; :meth:`to_dict` is the report (``verify.json``) with the gates judged."""

    request: VerifyRequest  # resolved: dataset, norm and eps set
    engine: RobustnessResult
    reference: RobustnessResult | None
    samples: SampleSet
    diagnostics: Diagnostics
    warnings: list[str]
    float_engine_agreement: float | None
    target_info: dict[str, Any]
    curve: dict[str, Any] | None = None
    unreliable: list[str] = field(default_factory=list)  # why the white-box numbers cannot be trusted
    white_box: dict[str, Any] = field(default_factory=dict)  # whether white-box attacks ran, and with what
    timing: dict[str, float] = field(default_factory=dict)
    engine_calls: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report: RobustBench's names at the top level, the float reference and the drops, agreement,
        warnings, the gates' verdicts, per-sample results, data, artifacts, timing and environment."""
        req, body = self.request, self.engine.to_dict()
        eps, norm = float(req.eps or 0.0), req.norm or "linf"
        report: dict[str, Any] = {
            "schema_version": REPORT_SCHEMA_VERSION,
            "kind": "rkd-verify",
            "eps": eps, "eps_text": req.eps_text or (f"{eps * 255:g}/255" if norm == "linf" else f"{eps:g}"),
            "norm": norm, "alpha": req.alpha,
            "n": self.engine.n, "seed": req.seed,
            "clean_acc": body["clean_acc"], "robust_acc": body["robust_acc"],
            **({"autoattack_acc": body["autoattack_acc"]} if "autoattack_acc" in body else {}),
            "attacks": body["attacks"], "worst_case": body["worst_case"],
            "by_class": self.engine.by_class(self.samples.classes),
            "semantics": SEMANTICS,
            "sources": {k: req.source(k) for k in ("eps", "norm", "dataset", "n", "attacks")},
        }
        if self.reference is not None:
            ref = self.reference.to_dict()
            report["float"] = {k: ref[k] for k in ("clean_acc", "robust_acc", "attacks", "worst_case")
                               if k in ref} | ({"autoattack_acc": ref["autoattack_acc"]} if "autoattack_acc" in ref
                                               else {})
            drop = {"clean_acc": ref["clean_acc"] - body["clean_acc"],
                    "robust_acc": ref["robust_acc"] - body["robust_acc"]}
            for name in ref["attacks"]:
                if name in body["attacks"] and name != "clean":
                    drop[f"{name}_acc"] = ref["attacks"][name]["acc"] - body["attacks"][name]["acc"]
            report["drop"] = drop
            report["float_engine_top1_agreement"] = self.float_engine_agreement
        report["agreement"] = self.diagnostics.agreement
        report["warnings"] = self.warnings
        gates = evaluate_gates(list(req.gates), report)
        report["gates"] = gates
        report["fail_on_warnings"] = req.fail_on_warnings
        failed = not all(g["passed"] for g in gates) or bool(req.fail_on_warnings and self.warnings)
        judged = bool(gates) or req.fail_on_warnings
        report["reliability"] = {"unreliable": list(self.unreliable), "note": UNRELIABLE_NOTE if self.unreliable
                                 else None}
        report["passed"] = not failed and not (judged and self.unreliable)
        floors = [g.text for g in req.gates if is_floor(g)]
        report["floor"] = {"gates": floors, "allow_no_floor": req.allow_no_floor,
                           "note": NO_FLOOR_NOTE if judged and not floors else None}
        report["verdict"] = ("no gates" if not judged else "fail" if failed else
                             "unreliable" if self.unreliable else "pass")
        report["white_box"] = self.white_box
        report["per_sample"] = body["per_sample"]
        report["data"] = {**self.samples.record(), "options": self.samples.options,
                          "source": _data_source(req.source("dataset"))}
        report["preprocessing"] = req.preprocessing.record() if req.preprocessing is not None else None
        report["label_map"] = str(req.label_map) if req.label_map is not None else None
        for key in ("artifact", "surrogate", "reference", "bundle"):
            report[key] = self.target_info[key]
        if req.profile:
            report["profile"] = req.profile
        if self.curve is not None:
            report["curve"] = self.curve
        report["timing"] = {k: round(v, 3) for k, v in self.timing.items()} | self.engine_calls
        report["versions"] = package_versions()
        report["device"] = device_description(req.device)
        return report


def _data_source(source: str) -> str:
    """The report's ``data.source``: ``given`` for data the user named, else where it was recorded."""
    return source if source in (*RECORDED, DEFAULT) else GIVEN


def curve_attacks(specs: Sequence[AttackSpec], fallback: str) -> list[AttackSpec]:
    """The attacks the curve repeats at each eps: the run's own gradient attacks (FGSM, PGD, CW; white-box, cheap
    enough to repeat), else ``fallback`` (``request.curve_attack``). AutoAttack, Square and transfer are not
    repeated per eps: the curve's points are the worst case over these attacks, and the record says so."""
    chosen = [s for s in specs if s.kind in GRADIENT_KINDS]
    return chosen or parse_attacks(fallback)[1:]


def _eps_text(eps: float, norm: str) -> str:
    """eps as the reports write it: ``k/255`` for L-inf, the number for L2."""
    return f"{eps * 255:.4g}/255" if norm == "linf" else f"{eps:.4g}"


def _worst_over(result: RobustnessResult, names: Sequence[str]) -> int:
    """Samples correct on the clean input and under every attack in ``names``."""
    ok = result.outcomes["clean"].correct.clone()
    for name in names:
        ok &= result.outcomes[name].correct
    return int(ok.sum())


def _curve(
    target: VerifyTarget, engine_model: nn.Module, x: torch.Tensor, y: torch.Tensor, request: VerifyRequest,
    measured: dict[str, RobustnessResult | None], specs: Sequence[AttackSpec], log: Callable[[str], None] | None,
) -> dict[str, Any]:
    """Accuracy against eps for the float reference and the engine: per eps the worst case over
    :func:`curve_attacks` (step min(alpha, eps/4)), with its 95% Wilson interval. At the run's own eps the
    suite's measured outcomes are reused (the same numbers as the report's attacks), at 0 the clean accuracy."""
    chosen = curve_attacks(specs, request.curve_attack)
    names = [s.name for s in chosen]
    norm = request.norm or "linf"
    models = {"engine": engine_model, "float": target.reference}
    rows: dict[str, list[float]] = {k: [] for k, m in models.items() if m is not None}
    bands: dict[str, list[list[float]]] = {k: [] for k in rows}
    for value in request.curve_eps or []:
        for label in rows:
            res = measured.get(label)
            if value == 0:
                res = evaluate_robustness(models[label], x, y, attacks=[], eps=1.0, batch_size=request.batch_size,
                                          seed=request.seed, device=request.device)
            elif not (res is not None and abs(value - float(request.eps or 0.0)) <= 1e-12
                      and all(n in res.outcomes for n in names)):
                with labelled(f"curve eps={_eps_text(value, norm)} {label} "):
                    res = evaluate_robustness(models[label], x, y, attacks=chosen, eps=value,
                                              alpha=min(request.alpha, value / 4), norm=norm,
                                              batch_size=request.batch_size, seed=request.seed,
                                              device=request.device, score_every_iterate=True)
            k = _worst_over(res, names if value else [])
            rows[label].append(k / len(x) if len(x) else 0.0)
            bands[label].append(list(wilson_interval(k, len(x))))
        if log is not None:
            log(f"curve eps={_eps_text(value, norm)}: engine {rows['engine'][-1]:.1%}")
    return {"attack": "+".join(names), "attacks": names, "norm": norm,
            "measure": f"the worst case over {', '.join(names)} at each eps (clean accuracy at 0), with 95% Wilson "
                       "intervals",
            "eps": list(request.curve_eps or []),
            "eps_text": [_eps_text(v, norm) for v in request.curve_eps or []],
            "not_repeated": [s.name for s in specs if s.kind != "clean" and s.name not in names],
            **rows, **{f"{k}_ci95": v for k, v in bands.items()}}


def _state_settings(target: VerifyTarget, request: VerifyRequest, specs: Sequence[AttackSpec], idx: torch.Tensor,
                    x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """What a resumable state must match to be reused: the artifacts, the samples (indices and images), the
    threat model and attacks, and what computes (device, runtime options, batches: AutoAttack's chunks)."""
    return {
        "artifact_sha256": target.info["artifact"].get("sha256"), "surrogate": target.info["surrogate"].get("sha256"),
        "reference": (target.info["reference"] or {}).get("sha256"), "indices_sha256": indices_sha256(idx),
        "dataset": request.dataset, "split": request.split, "eps": request.eps, "alpha": request.alpha,
        "norm": request.norm, "seed": request.seed, "attacks": [s.name for s in specs], "transfer": request.transfer,
        "samples_sha256": samples_sha256(x, y), "device": request.device,
        "runtime_options": request.runtime_options, "batch_size": request.batch_size,
        "preprocessing": request.preprocessing.record() if request.preprocessing is not None else None,
        "label_map": _file_record(request.label_map),
    }


def _file_record(path: Any) -> dict[str, Any] | None:
    """A file's name and sha256, for what a resumable state must match."""
    if path is None:
        return None
    from rkd.atomic import file_sha256

    return {"file": str(path), "sha256": file_sha256(path)}


def _attack(model: nn.Module, who: str, x: torch.Tensor, y: torch.Tensor, specs: Sequence[AttackSpec],
            state: VerifyState, log: Callable[[str], None] | None, **suite_kw: Any) -> RobustnessResult:
    """The suite on one side (``float`` or ``engine``), resumed from and saved to ``state``."""
    with labelled(f"{who} "):
        return evaluate_robustness(model, x, y, attacks=list(specs), autoattack_state=state.autoattack_path(who),
                                   done=state.load(who, ["clean"] + [s.name for s in specs]),
                                   on_outcome=lambda o: state.save(who, o), log=log, **suite_kw)


def _open(
    request: VerifyRequest, specs: list[Any], log: Callable[[str], None] | None
) -> tuple[VerifyRequest, Any]:
    """Open the artifact (runtime, surrogate, reference) and resolve the request's defaults against it."""
    white_box = any(s.kind != "clean" and s.uses_gradients for s in specs)
    target = open_target(request.artifact, surrogate=request.surrogate, reference=request.reference,
                         device=request.device, batch_size=request.batch_size,
                         runtime_options=request.runtime_options, preprocessing=request.preprocessing,
                         reference_model=request.reference_model,
                         image_size=(request.data_options or {}).get("image_size"), need_gradients=white_box)
    request = resolve_against(request, target, log=log)
    check_threat_model(request)
    return request, target


def _samples(request: VerifyRequest, target: Any, dev: torch.device) -> tuple[Any, Any]:
    """Load the samples and check them against the artifact: class names, input shape, output width (after a
    label map, which selects the artifact's outputs)."""
    samples = load_samples(str(request.dataset), request.split, n=request.n, sample=request.sample, seed=request.seed,
                           root=request.data_root, options=request.data_options, num_classes=target.num_classes,
                           model=f"'{target.path.name}'", action="verify")
    check_class_names(target, samples.classes, samples.dataset)
    x = samples.x
    if request.label_map is not None:
        from rkd.deploy.adapters import read_label_map

        check_input_shape(target, x, f"{request.dataset} {request.split}")
        width = int(target.runtime.predict(x[:1]).shape[1])
        target = target.with_outputs(read_label_map(request.label_map, samples.classes, width), x[:1])
    check_input_shape(target, x, f"{request.dataset} {request.split}")
    check_output_widths(target, x[:1], dev, num_classes=len(samples.classes), dataset=samples.dataset)
    return samples, target


def verify_artifact(request: VerifyRequest, *, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Verify ``request.artifact`` and return the report (RobustBench names at the top level, gate verdicts).

    Raises:
        UsageError: bad arguments, fewer samples than asked for or than the gates require, a mismatched state.
        CheckpointError: unreadable or changed artifacts, a stale engine, a class-count mismatch.
        MissingDependencyError: the artifact's runtime is not installed here.
    """
    t_start = time.perf_counter()
    specs = check_request(request)
    request, target = _open(request, specs, log)
    has_reference = target.reference is not None
    same_model = target.kind == "checkpoint" and request.reference is None  # the model is its own reference
    check_gates_measurable(list(request.gates), specs, has_reference=has_reference,
                           transfer=request.transfer and has_reference and not same_model)
    check_judged(request)
    dev = torch.device(request.device)
    samples, target = _samples(request, target, dev)
    x, y = samples.x, samples.y

    state = VerifyState(request.state, _state_settings(target, request, specs, samples.idx, x, y))
    timing: dict[str, float] = {}
    suite_kw = dict(eps=float(request.eps or 0.0), alpha=request.alpha, norm=request.norm or "linf",
                    batch_size=request.batch_size, seed=request.seed, device=dev, keep_adv=True,
                    autoattack_on="robust", score_every_iterate=True)

    reference: RobustnessResult | None = None
    if has_reference and not same_model:
        t0 = time.perf_counter()
        if log is not None:
            log("float reference: attacking (white-box, its own gradients)")
        reference = _attack(target.reference, "float", x, y, specs, state, log, **suite_kw)
        timing["float_s"] = time.perf_counter() - t0

    engine_model = EngineModel(target.runtime, target.surrogate).eval()
    t0 = time.perf_counter()
    if log is not None:
        log(f"engine ({target.kind}): attacking through the surrogate; Square and transfer on the engine itself")
    engine = _attack(engine_model, "engine", x, y, specs, state, log, **suite_kw)
    timing["engine_s"] = time.perf_counter() - t0
    if same_model:
        reference = engine
    if reference is not None and request.transfer and not same_model:
        outcome = run_transfer(target.runtime, target.reference, reference, engine, x, y, specs, state, **suite_kw)
        engine.outcomes[TRANSFER] = outcome
        if log is not None:
            log(f"transfer: {int(outcome.correct.sum())}/{engine.n} robust ({outcome.seconds:.1f} s)")

    t0 = time.perf_counter()
    diagnostics = diagnose(target, engine_model, engine, specs, x, y, request.batch_size, dev)
    timing["checks_s"] = time.perf_counter() - t0
    found = warnings(target, engine, specs, diagnostics, request, num_classes=len(samples.classes))

    curve = None
    if request.curve_eps:
        t0 = time.perf_counter()
        curve = _curve(target, engine_model, x, y, request, {"engine": engine, "float": reference}, specs,
                       log)
        timing["curve_s"] = time.perf_counter() - t0
    agree = (float(float_agreement(target, x, request.batch_size, dev).float().mean())
             if reference is not None else None)
    timing["total_s"] = time.perf_counter() - t_start
    return VerifyReport(request=request, engine=engine, reference=reference, samples=samples,
                        diagnostics=diagnostics, warnings=found, float_engine_agreement=agree,
                        target_info=target.info, curve=curve, timing=timing,
                        unreliable=unreliable_reasons(diagnostics, specs, request, white_box=target.white_box),
                        white_box=white_box_record(target, specs),
                        engine_calls={"engine_calls": engine_model.calls,
                                      "engine_images": engine_model.images}).to_dict()
