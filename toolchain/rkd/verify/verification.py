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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rkd.attacks.predictions import batched_logits, logit_agreement, predicted_class
from rkd.data import (
    FALLBACK_DATASET,
    indices_sha256,
    load_dataset,
    recorded_data,
    samples_sha256,
    select_indices,
)
from rkd.environment import device_description, package_versions
from rkd.errors import CheckpointError, UsageError
from rkd.verify.engine_model import EngineModel
from rkd.verify.gates import NO_FLOOR_NOTE, Gate, check_floor, check_gate_metrics, evaluate_gates, is_floor
from rkd.verify.state import VerifyState
from rkd.verify.suite import (
    AttackOutcome,
    AttackSpec,
    RobustnessResult,
    check_suite,
    evaluate_robustness,
    parse_attacks,
)
from rkd.verify.target import VerifyTarget, open_target

REPORT_SCHEMA_VERSION = 1
DEFAULT_ATTACKS = "pgd20,autoattack"
#: Below these engine/surrogate top-1 agreements the surrogate's gradients are suspect (a warning).
MIN_CLEAN_AGREEMENT = 0.99
MIN_ADVERSARIAL_AGREEMENT = 0.95
TRANSFER = "transfer"


@dataclass
class VerifyRequest:
    """What to verify and how; see ``rkd verify --help`` for each field."""

    artifact: str | Path
    dataset: str | None = None  # None: the data set the bundle's manifest (or checkpoint) records, else cifar10
    data_options: dict[str, Any] | None = None
    data_root: str | None = None
    split: str = "test"
    n: int = 1000
    sample: str = "first"
    attacks: str = DEFAULT_ATTACKS
    eps: float | None = None  # None: the bundle's threat model, else 8/255
    eps_text: str | None = None
    alpha: float = 2 / 255
    norm: str | None = None  # None: the bundle's threat model, else linf
    seed: int = 0
    batch_size: int = 256
    device: str = "cpu"
    gates: list[Gate] = field(default_factory=list)
    fail_on_warnings: bool = False
    required_n: int | None = None  # a profile's gates were calibrated on at least this many samples
    transfer: bool = True
    surrogate: str | Path | None = None
    reference: str | Path | None = None
    state: str | Path | None = None
    curve_eps: list[float] | None = None
    curve_attack: str = "pgd20"
    min_clean_agreement: float = MIN_CLEAN_AGREEMENT
    min_adversarial_agreement: float = MIN_ADVERSARIAL_AGREEMENT
    profile: dict[str, Any] | None = None
    runtime_options: dict[str, Any] | None = None  # passed to the runtime (e.g. ONNX Runtime providers)
    require_gates: bool = False  # refuse a run that could not fail (rkd verify without --no-gates)
    allow_no_floor: bool = False  # judge gates without a floor on robust accuracy (drops/agreement only)
    floor_fix: str = ("add a gate such as 'robust_acc>=0.40' (what the model must keep), or set allow_no_floor to "
                      "judge only what deployment changes")  # how the refusal says to fix it


def check_gates_measurable(gates: Sequence[Gate], specs: Sequence[AttackSpec], *, has_reference: bool,
                           transfer: bool) -> None:
    """:func:`~rkd.verify.gates.check_gate_metrics` for a suite: the engine measures ``specs`` (plus transfer
    when it runs), the float reference the same ``specs``.

    Raises:
        UsageError: a gate on a value this run will not measure.
    """
    names = [s.name for s in specs if s.kind != "clean"]
    check_gate_metrics(gates, names + ([TRANSFER] if transfer else []), has_reference=has_reference,
                       reference_attacks=names, gradient_attacks=any(s.kind != "clean" and s.uses_gradients
                                                                     for s in specs))


def _engine_predict(runtime: Any, x: torch.Tensor) -> torch.Tensor:
    return predicted_class(runtime.predict(x)).cpu()


def _transfer_outcome(
    runtime: Any, reference: RobustnessResult, engine_clean: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
    errors: tuple[torch.Tensor, RobustnessResult] | None = None,
) -> AttackOutcome:
    """The engine on every adversarial example of the reference's attacks.

    The reference's suite attacks only what it classifies right; ``errors`` = (indices, result) holds the same
    attacks run by the reference from the samples it gets wrong (``attack_errors``), so that the engine-correct
    ones among them have transfer examples too. Engine-correct samples left without any example (e.g. when the
    suite has no FGSM/PGD/CW) count as robust here and ``details["not_covered"]`` says how many there are (the
    white-box and Square rows still attack them).
    """
    t0 = time.perf_counter()
    correct = engine_clean.clone()
    per_source: dict[str, int] = {}
    x_adv = x.clone()
    ref_clean = reference.outcomes["clean"].correct
    covered_any = ref_clean.clone()
    for name, outcome in reference.outcomes.items():
        if name == "clean" or outcome.x_adv is None:
            continue
        examples, covered = outcome.x_adv, ref_clean
        extra = errors[1].outcomes.get(name) if errors is not None else None
        if errors is not None and extra is not None and extra.x_adv is not None:
            examples, covered = examples.clone(), ref_clean.clone()
            examples[errors[0]] = extra.x_adv
            covered[errors[0]] = True
        covered_any |= covered
        todo = (engine_clean & covered).nonzero().flatten()
        if not len(todo):
            continue
        ok = _engine_predict(runtime, examples[todo]) == y[todo]
        broken = todo[~ok & correct[todo]]
        x_adv[broken] = examples[broken]
        correct[todo] &= ok
        per_source[name] = int((~ok).sum())
    details = {"sources": sorted(per_source), "broken_by_source": per_source,
               "from_reference_errors": int((engine_clean & ~ref_clean & covered_any).sum()),
               "not_covered": int((engine_clean & ~covered_any).sum()),
               "note": "adversarial examples of the float reference's attacks, run on the engine"}
    return AttackOutcome(TRANSFER, correct, time.perf_counter() - t0, details, x_adv)


def _agreement(surrogate: nn.Module, runtime: Any, x: torch.Tensor, batch_size: int) -> dict[str, Any] | None:
    """Top-1 agreement and logit difference of surrogate and engine on ``x``."""
    if len(x) == 0:
        return None
    return logit_agreement(batched_logits(surrogate, x, batch_size), runtime.predict(x))


def _perturbed(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The rows of ``x_adv`` an attack moved: AutoAttack leaves ``x`` where it did not run or found nothing, and
    clean inputs would pull the adversarial agreement towards the clean one."""
    return x_adv[(x_adv != x).flatten(1).any(1)]


def _zero_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, dev: torch.device) -> int:
    """Samples whose cross-entropy input gradient through ``model`` is exactly zero (AutoAttack's check) or not
    finite (an attack's sign step cannot use it either)."""
    zeros = 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(dev).requires_grad_(True)
        loss = nn.functional.cross_entropy(model(xb), y[i:i + batch_size].to(dev), reduction="sum")
        (grad,) = torch.autograd.grad(loss, xb)
        flat = grad.flatten(1)
        zeros += int(((flat.abs().amax(1) == 0) | ~torch.isfinite(flat).all(1)).sum())
    return zeros


def _warnings(
    target: VerifyTarget, engine: RobustnessResult, specs: Sequence[AttackSpec], agreement: dict[str, Any],
    zero_grads: int, attacked: int, request: VerifyRequest, eps: float, norm: str = "linf",
) -> list[str]:
    out = list(target.warnings) + list(engine.warnings)
    tm = target.threat_model
    if tm and (tm.get("norm") != norm or abs(float(tm.get("eps", eps)) - eps) > 1e-9):
        out.append(f"threat model differs from the bundle's ({tm.get('norm')} eps={float(tm.get('eps', eps)):.5g}): "
                   f"verifying {norm} eps={eps:.5g}")
    gradient = engine.outcomes["clean"].correct.clone()  # robust to every gradient attack (none: clean-correct)
    for spec in specs:
        if spec.kind != "clean" and spec.uses_gradients and spec.name in engine.outcomes:
            gradient &= engine.outcomes[spec.name].correct
    for spec in specs:
        outcome = engine.outcomes.get(spec.name)
        if outcome is None or spec.kind != "autoattack":
            continue
        by_square = int((outcome.details.get("broken_by") or {}).get("square", 0))
        if not spec.uses_gradients:
            by_square = int((gradient & ~outcome.correct).sum())
        if by_square:
            out.append(f"Square (no gradients) broke {by_square} sample(s) the gradient attacks did not: gradient "
                       "masking or a weak surrogate; the gradient-attack numbers overstate robustness")
        for msg in outcome.details.get("messages") or []:
            out.append(f"AutoAttack: {msg}")
    transfer = engine.outcomes.get(TRANSFER)
    if transfer is not None:
        extra = int((gradient & ~transfer.correct).sum())
        if extra:
            out.append(f"transfer from the float model broke {extra} sample(s) the white-box attacks on the engine did "
                       "not: the surrogate's gradients are weaker than the float model's")
    if zero_grads:
        out.append(f"zero or non-finite input gradient through the surrogate on {zero_grads} of {attacked} "
                   "clean-correct samples: gradient attacks cannot move them (gradient masking); trust Square and "
                   "transfer there")
    clean_agree = (agreement.get("clean") or {}).get("top1_agreement")
    if clean_agree is not None and clean_agree < request.min_clean_agreement:
        out.append(f"engine/surrogate top-1 agreement on clean inputs is {clean_agree:.1%} "
                   f"(< {request.min_clean_agreement:.0%}): the surrogate does not replicate the engine")
    adv_agree = (agreement.get("adversarial") or {}).get("top1_agreement")
    if adv_agree is not None and adv_agree < request.min_adversarial_agreement:
        out.append(f"engine/surrogate top-1 agreement on adversarial inputs is {adv_agree:.1%} "
                   f"(< {request.min_adversarial_agreement:.0%}): gradients may point the wrong way near the boundary")
    return list(dict.fromkeys(out))


def _curve(
    target: VerifyTarget, engine_model: nn.Module, x: torch.Tensor, y: torch.Tensor, request: VerifyRequest,
    log: Callable[[str], None] | None, norm: str = "linf",
) -> dict[str, Any]:
    """Accuracy against eps for the float reference and the engine (one PGD attack per eps, step
    min(alpha, eps/4))."""
    spec = parse_attacks(request.curve_attack)[1:]
    rows: dict[str, list[float]] = {"engine": [], "float": []}
    for value in request.curve_eps or []:
        for label, model in (("engine", engine_model), ("float", target.reference)):
            if model is None:
                continue
            if value == 0:
                res = evaluate_robustness(model, x, y, attacks=[], eps=1.0, batch_size=request.batch_size,
                                          seed=request.seed, device=request.device)
            else:
                res = evaluate_robustness(model, x, y, attacks=spec, eps=value, alpha=min(request.alpha, value / 4),
                                          norm=norm, batch_size=request.batch_size, seed=request.seed,
                                          device=request.device, score_every_iterate=True)
            rows[label].append(res.accuracy("worst_case"))
        if log is not None:
            log(f"curve eps={value:.4g}: engine {rows['engine'][-1]:.1%}")
    return {"attack": request.curve_attack, "eps": list(request.curve_eps or []),
            **{k: v for k, v in rows.items() if v}}


def verify_artifact(request: VerifyRequest, *, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Verify ``request.artifact`` and return the report (RobustBench names at the top level, gate verdicts).

    Raises:
        UsageError: bad arguments, fewer samples than asked for or than the gates require, a mismatched state.
        CheckpointError: unreadable or changed artifacts, a stale engine, a class-count mismatch.
        MissingDependencyError: the artifact's runtime is not installed here.
    """
    t_start = time.perf_counter()
    specs = parse_attacks(request.attacks)
    if len(specs) == 1:
        raise UsageError(f"--attacks '{request.attacks}' has no attack: robust accuracy would be clean accuracy; name "
                         "at least one, e.g. pgd20,autoattack")
    if request.required_n is not None and request.n < request.required_n:
        raise UsageError(f"the gates were set for n >= {request.required_n} samples but --n is {request.n}: a gate on "
                         "fewer samples than it asks for is not a pass; raise --n")
    if request.curve_eps:
        parse_attacks(request.curve_attack)
    if request.gates or request.fail_on_warnings:  # judged: a model without robustness must be able to fail
        check_floor(request.gates, allow_no_floor=request.allow_no_floor, fix=request.floor_fix)
    check_suite(specs, seed=request.seed)  # before any model call: a seed AutoAttack refuses, no pyautoattack
    target = open_target(request.artifact, surrogate=request.surrogate, reference=request.reference,
                         device=request.device, batch_size=request.batch_size,
                         runtime_options=request.runtime_options)
    data_source = "given"
    if request.dataset is None:
        record, where = target.trained_on()
        chosen = recorded_data(record, split=request.split, n=request.n, image_size=target.image_size)
        data_source = where if chosen is not None else "default"
        dataset, options = chosen or (FALLBACK_DATASET, {})
        request = replace(request, dataset=dataset, data_options={**options, **(request.data_options or {})})
        if log is not None:
            log(f"data: {dataset}" + (f" (recorded in {where}; --data overrides)" if chosen is not None else
                                      " (nothing recorded; --data overrides)"))
    elif request.dataset == "imagefolder":  # a folder given by path: decoded at the model's size and crop
        record, _ = target.trained_on()
        recorded = record.get("options") if isinstance(record, dict) and record.get("dataset") == "imagefolder" else None
        fill = {k: v for k, v in (recorded or {}).items() if k in ("image_size", "crop_ratio")}
        if target.image_size is not None:
            fill.setdefault("image_size", target.image_size)
        request = replace(request, data_options={**fill, **(request.data_options or {})})
    has_reference = target.reference is not None
    same_model = target.kind == "checkpoint" and request.reference is None  # the model is its own reference
    check_gates_measurable(request.gates, specs, has_reference=has_reference,
                           transfer=request.transfer and has_reference and not same_model)
    if request.require_gates and not request.gates and not request.fail_on_warnings:
        raise UsageError("no gate to judge the artifact against, so the run could not fail: add --gate (e.g. "
                         "'drop.robust_acc<=0.03'), --profile with gates or --fail-on-warnings, or --no-gates "
                         "to only measure")

    tm = target.threat_model or {}
    norm = request.norm or str(tm.get("norm", "linf"))
    if norm not in ("linf", "l2"):
        raise UsageError(f"norm must be linf or l2, got {norm!r}")
    eps = request.eps
    if eps is None:
        if tm.get("norm", "linf") != norm:
            raise UsageError(f"verifying {norm} but the bundle's threat model is {tm.get('norm')} "
                             f"eps={float(tm.get('eps', 0)):.5g}: give --eps for the {norm} ball")
        eps = float(tm.get("eps", 8 / 255))

    data = load_dataset(request.dataset, request.split, root=request.data_root, **(request.data_options or {}))
    if request.n > len(data):
        raise UsageError(f"--n {request.n} asks for more samples than {request.dataset} {request.split} has "
                         f"({len(data)}); lower --n")
    if target.num_classes is not None and target.num_classes != len(data.classes):
        raise CheckpointError(f"'{target.path.name}' predicts {target.num_classes} classes but {request.dataset} has "
                              f"{len(data.classes)}: verify it on the data set it was trained for")
    _check_class_names(target, data.classes, request.dataset or "the data")
    idx = select_indices(len(data), request.n, seed=request.seed, mode=request.sample)
    x, y = data.to_float(idx), data.y[idx]
    dev = torch.device(request.device)
    _check_input_shape(target, x, f"{request.dataset} {request.split}")
    _check_output_widths(target, x[:1], dev, num_classes=len(data.classes), dataset=request.dataset or "the data")

    settings = {
        "artifact_sha256": target.info["artifact"].get("sha256"), "surrogate": target.info["surrogate"].get("sha256"),
        "reference": (target.info["reference"] or {}).get("sha256"), "indices_sha256": indices_sha256(idx),
        "dataset": request.dataset, "split": request.split, "eps": eps, "alpha": request.alpha,
        "norm": norm, "seed": request.seed, "attacks": [s.name for s in specs], "transfer": request.transfer,
        # which images (not only which indices), and what computes: a state from other data, another execution
        # provider or other batches (AutoAttack's chunks) is refused, not silently reused
        "samples_sha256": samples_sha256(x, y), "device": request.device,
        "runtime_options": request.runtime_options, "batch_size": request.batch_size,
    }
    state = VerifyState(request.state, settings)
    timing: dict[str, float] = {}
    suite_kw = dict(eps=eps, alpha=request.alpha, norm=norm, batch_size=request.batch_size,
                    seed=request.seed, device=dev, keep_adv=True, autoattack_on="robust", score_every_iterate=True)

    reference: RobustnessResult | None = None
    if has_reference and not same_model:
        t0 = time.perf_counter()
        if log is not None:
            log("float reference: attacking (white-box, its own gradients)")
        reference = evaluate_robustness(
            target.reference, x, y, attacks=specs, autoattack_state=state.autoattack_path("float"),
            done=state.load("float", ["clean"] + [s.name for s in specs]),
            on_outcome=lambda o: state.save("float", o), log=log, **suite_kw)
        timing["float_s"] = time.perf_counter() - t0

    engine_model = EngineModel(target.runtime, target.surrogate).eval()
    t0 = time.perf_counter()
    if log is not None:
        log(f"engine ({target.kind}): attacking through the surrogate; Square and transfer on the engine itself")
    engine = evaluate_robustness(
        engine_model, x, y, attacks=specs, autoattack_state=state.autoattack_path("engine"),
        done=state.load("engine", ["clean"] + [s.name for s in specs]),
        on_outcome=lambda o: state.save("engine", o), log=log, **suite_kw)
    timing["engine_s"] = time.perf_counter() - t0
    if same_model:
        reference = engine
    if reference is not None and request.transfer and not same_model:
        done = state.load("engine", [TRANSFER])
        outcome = done.get(TRANSFER)
        if outcome is None:
            t0 = time.perf_counter()
            engine_clean = engine.outcomes["clean"].correct
            gap = (engine_clean & ~reference.outcomes["clean"].correct).nonzero().flatten()
            gap_specs = [s for s in specs if s.kind in ("fgsm", "pgd", "cw")]
            errors = None
            if len(gap) and gap_specs:  # transfer examples for what the engine gets right and the reference not
                errors = (gap, evaluate_robustness(target.reference, x[gap], y[gap], attacks=gap_specs,
                                                   attack_errors=True, **suite_kw))
            outcome = _transfer_outcome(target.runtime, reference, engine_clean, x, y, errors)
            outcome.seconds = time.perf_counter() - t0
            state.save("engine", outcome)
        engine.outcomes[TRANSFER] = outcome
        if log is not None:
            log(f"transfer: {int(outcome.correct.sum())}/{engine.n} robust ({outcome.seconds:.1f} s)")

    t0 = time.perf_counter()
    clean_ok = engine.outcomes["clean"].correct
    attacked = clean_ok.nonzero().flatten()
    adv = [_perturbed(o.x_adv[attacked], x[attacked]) for s in specs if s.kind != "clean" and s.uses_gradients
           for o in [engine.outcomes[s.name]] if o.x_adv is not None]
    adv = [a for a in adv if len(a)]
    agreement = {
        "clean": _agreement(target.surrogate, target.runtime, x, request.batch_size),
        "adversarial": _agreement(target.surrogate, target.runtime, torch.cat(adv), request.batch_size) if adv else None,
    }
    zero_grads = _zero_gradients(engine_model, x[attacked], y[attacked], request.batch_size, dev) if len(attacked) else 0
    timing["checks_s"] = time.perf_counter() - t0
    warnings = _warnings(target, engine, specs, agreement, zero_grads, len(attacked), request, eps, norm)

    curve = None
    if request.curve_eps:
        t0 = time.perf_counter()
        curve = _curve(target, engine_model, x, y, request, log, norm)
        timing["curve_s"] = time.perf_counter() - t0

    body = engine.to_dict()
    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "kind": "rkd-verify",
        "eps": eps, "eps_text": request.eps_text or (f"{eps * 255:g}/255" if norm == "linf" else f"{eps:g}"),
        "norm": norm, "alpha": request.alpha,
        "n": engine.n, "seed": request.seed,
        "clean_acc": body["clean_acc"], "robust_acc": body["robust_acc"],
        **({"autoattack_acc": body["autoattack_acc"]} if "autoattack_acc" in body else {}),
        "attacks": body["attacks"], "worst_case": body["worst_case"],
        "by_class": engine.by_class(data.classes),
        "semantics": "robust = correct on the clean input and on every attack's output (white-box through the "
                     "surrogate, Square on the engine, transfer from the float reference)",
    }
    if reference is not None:
        ref = reference.to_dict()
        report["float"] = {k: ref[k] for k in ("clean_acc", "robust_acc", "attacks", "worst_case")
                           if k in ref} | ({"autoattack_acc": ref["autoattack_acc"]} if "autoattack_acc" in ref else {})
        drop = {"clean_acc": ref["clean_acc"] - body["clean_acc"], "robust_acc": ref["robust_acc"] - body["robust_acc"]}
        for name in ref["attacks"]:
            if name in body["attacks"] and name != "clean":
                drop[f"{name}_acc"] = ref["attacks"][name]["acc"] - body["attacks"][name]["acc"]
        report["drop"] = drop
        report["float_engine_top1_agreement"] = float(_float_agreement(target, x, request.batch_size, dev).float().mean())
    report["agreement"] = agreement
    report["warnings"] = warnings
    gates = evaluate_gates(request.gates, report)
    warn_fail = bool(request.fail_on_warnings and warnings)
    report["gates"] = gates
    report["fail_on_warnings"] = request.fail_on_warnings
    report["passed"] = all(g["passed"] for g in gates) and not warn_fail
    judged = bool(gates) or request.fail_on_warnings
    floors = [g.text for g in request.gates if is_floor(g)]
    report["floor"] = {"gates": floors, "allow_no_floor": request.allow_no_floor,
                       "note": NO_FLOOR_NOTE if judged and not floors else None}
    report["verdict"] = ("pass" if report["passed"] else "fail") if judged else "no gates"
    report["per_sample"] = body["per_sample"]
    report["data"] = {"dataset": request.dataset, "options": dict(request.data_options or {}), "source": data_source,
                      "split": request.split, "n": len(idx), "sample": request.sample,
                      "indices_sha256": indices_sha256(idx), "first_indices": idx[:10].tolist()}
    report["artifact"] = target.info["artifact"]
    report["surrogate"] = target.info["surrogate"]
    report["reference"] = target.info["reference"]
    report["bundle"] = target.info["bundle"]
    if request.profile:
        report["profile"] = request.profile
    if curve is not None:
        report["curve"] = curve
    timing["total_s"] = time.perf_counter() - t_start
    report["timing"] = {k: round(v, 3) for k, v in timing.items()} | {
        "engine_calls": engine_model.calls, "engine_images": engine_model.images}
    report["versions"] = package_versions()
    report["device"] = device_description(request.device)
    return report


def _placeholder(names: Sequence[str]) -> bool:
    """Names that only number the classes (``"0"``, ``"1"``, ...: an npz file without ``classes``)."""
    return list(names) == [str(i) for i in range(len(names))]


def _check_class_names(target: VerifyTarget, classes: Sequence[str], dataset: str) -> None:
    """The classes the bundle (or checkpoint) records must be the data set's, in order (numbers only on either
    side say nothing and pass).

    Raises:
        CheckpointError: other class names, both lists shown briefly.
    """
    recorded = target.class_names
    if not recorded or _placeholder(recorded) or _placeholder(classes) or list(recorded) == list(classes):
        return

    def brief(names: Sequence[str]) -> str:
        return ", ".join(names[:4]) + (f", ... ({len(names)})" if len(names) > 4 else "")

    raise CheckpointError(f"'{target.path.name}' was trained on classes {brief(recorded)} but {dataset} has "
                          f"{brief(classes)}: verify it on the data set it was trained for (--data)")


def _check_input_shape(target: VerifyTarget, x: torch.Tensor, what: str) -> None:
    """The engine's declared input (channels, height, width) must take the data's images.

    Raises:
        UsageError: another channel count or image size, both shapes named.
    """
    declared = getattr(target.runtime, "input_shape", None)
    if not declared or len(declared) != 4:
        return
    got = tuple(int(d) for d in x.shape[1:])
    if all(d is None or d == g for d, g in zip(declared[1:], got, strict=True)):
        return
    shown = "(" + ", ".join("N" if i == 0 or d is None else str(d) for i, d in enumerate(declared)) + ")"
    raise UsageError(f"'{target.path.name}' takes inputs shaped {shown} but {what} images are (N, "
                     f"{', '.join(map(str, got))}): verify it on data of its own size and channels (--data)")


def _check_output_widths(target: VerifyTarget, probe: torch.Tensor, dev: torch.device, *,
                         num_classes: int | None = None, dataset: str = "the data") -> None:
    """The engine, its surrogate and the float reference must score the same classes (one image through each),
    and as many as the data set has.

    Raises:
        CheckpointError: an engine with another number of outputs than the data set's classes; a surrogate or
            reference with another number than the engine.
    """
    engine = int(target.runtime.predict(probe).shape[1])
    if num_classes is not None and engine != num_classes:
        raise CheckpointError(f"'{target.path.name}' outputs {engine} scores per image but {dataset} has "
                              f"{num_classes} classes: verify it on the data set it was trained for (--data)")
    for what, model, info in (("--surrogate", target.surrogate, target.info["surrogate"]),
                              ("--reference", target.reference, target.info["reference"])):
        if model is None:
            continue
        with torch.inference_mode():
            width = int(model(probe.to(dev)).shape[1])
        if width != engine:
            raise CheckpointError(f"{what} '{(info or {}).get('file')}' scores {width} classes but the engine {engine}: "
                                  "give the float model of the same classifier")


def _float_agreement(target: VerifyTarget, x: torch.Tensor, batch_size: int, dev: torch.device) -> torch.Tensor:
    """Per-sample top-1 agreement of the engine and the float reference on clean inputs."""
    if target.reference is None:
        return torch.zeros(0, dtype=torch.bool)
    return _engine_predict(target.runtime, x) == batched_logits(target.reference, x, batch_size, dev).argmax(1)


def request_from_config(artifact: str | Path, cfg: Any, *, source: str, required_n: int | None = None,
                        **kw: Any) -> VerifyRequest:
    """A :class:`VerifyRequest` from a recipe's or profile's ``verify`` section (:class:`rkd.config.VerifyConfig`);
    its gates are labelled with ``source``; ``kw`` sets the remaining fields (data, device, state, ...)."""
    from rkd.verify.gates import parse_gate

    return VerifyRequest(
        artifact=artifact, n=cfg.n, sample=cfg.sample, attacks=cfg.attacks, eps=cfg.eps,
        gates=[parse_gate(g, source=source) for g in cfg.gates], fail_on_warnings=cfg.fail_on_warnings,
        transfer=cfg.transfer, required_n=required_n, allow_no_floor=cfg.allow_no_floor, **kw)
