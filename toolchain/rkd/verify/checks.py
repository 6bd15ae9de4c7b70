"""The checks a verify run makes before it attacks anything: a request that can judge (attacks, sample size,
gates that can fail and can be measured) and an artifact that fits the data (classes, input shape, output
width). Each failure is a one-line error that says how to fix it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rkd.errors import CheckpointError, UsageError
from rkd.verify.attack_spec import AttackSpec, check_suite, parse_attacks
from rkd.verify.gates import Gate, check_floor, check_gate_metrics
from rkd.verify.request import MIN_JUDGED_EPS, VerifyRequest
from rkd.verify.target import VerifyTarget

TRANSFER = "transfer"


def check_request(request: VerifyRequest) -> list[AttackSpec]:
    """Everything about ``request`` that needs no model: its attacks parse and include one, ``n`` covers what
    the gates were set for, a judged run has a floor (unless allowed), AutoAttack accepts the seed. Returns the
    parsed attacks.

    Raises:
        UsageError: the first of these that fails.
    """
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
        check_floor(list(request.gates), allow_no_floor=request.allow_no_floor, fix=request.floor_fix)
    check_suite(specs, seed=request.seed)  # before any model call: a seed AutoAttack refuses, no pyautoattack
    return specs


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


def check_judged(request: VerifyRequest) -> None:
    """A run that must be able to fail (``require_gates``) has a gate or fails on warnings.

    Raises:
        UsageError: neither, with the three ways out.
    """
    if request.require_gates and not request.gates and not request.fail_on_warnings:
        raise UsageError("no gate to judge the artifact against, so the run could not fail: add --gate (e.g. "
                         "'drop.robust_acc<=0.03'), --profile with gates or --fail-on-warnings, or --no-gates "
                         "to only measure")


def check_threat_model(request: VerifyRequest) -> None:
    """A judged run (gates or ``fail_on_warnings``) attacks at a radius someone stated or that the artifact's own
    hash covers, and at one that can fail a model: not below :data:`~rkd.verify.request.MIN_JUDGED_EPS`.

    Raises:
        UsageError: the threat model would come from the bundle's manifest alone (which no hash covers, so an
            edit to it could pass any model), or eps is too small to judge.
    """
    if not (request.gates or request.fail_on_warnings):
        return
    eps, norm = float(request.eps or 0.0), request.norm or "linf"
    shown = f"{eps * 255:.4g}/255" if norm == "linf" else f"{eps:g}"
    unprotected = [k for k in ("eps", "norm") if "no hash covers it" in request.source(k)]
    if unprotected:
        raise UsageError(f"the threat model ({norm} eps={shown}) would come from the bundle's manifest.json, which no "
                         "hash covers, so an edit to it could pass any model: state it (--eps and --norm, or "
                         "verify.eps in the profile or recipe), or re-export the bundle with this version of rkd, "
                         "which records it in the model file")
    if eps < MIN_JUDGED_EPS:
        raise UsageError(f"eps={shown} ({request.source('eps')}) is below 1/255, one 8-bit intensity level: no attack "
                         "can change a stored image at that radius, so a gate would pass a model with no "
                         "robustness; judge at the radius the model must withstand (e.g. --eps 8/255)")


def _placeholder(names: Sequence[str]) -> bool:
    """Names that only number the classes (``"0"``, ``"1"``, ...: an npz file without ``classes``)."""
    return list(names) == [str(i) for i in range(len(names))]


def check_class_names(target: VerifyTarget, classes: Sequence[str], dataset: str) -> None:
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


def check_input_shape(target: VerifyTarget, x: torch.Tensor, what: str) -> None:
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


def check_output_widths(target: VerifyTarget, probe: torch.Tensor, dev: torch.device, *,
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
                              f"{num_classes} classes: verify it on the data set it was trained for (--data), or "
                              "map its outputs to the data set's classes with --label-map FILE")
    for what, model, info in (("--surrogate", target.surrogate, target.info["surrogate"]),
                              ("--reference", target.reference, target.info["reference"])):
        if model is None:
            continue
        with torch.inference_mode():
            width = int(model(probe.to(dev)).shape[1])
        if width != engine:
            raise CheckpointError(f"{what} '{(info or {}).get('file')}' scores {width} classes "
                                  f"but the engine {engine}: "
                                  "give the float model of the same classifier")
