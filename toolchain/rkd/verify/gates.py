"""Deployment gates: ``METRIC OP VALUE`` checks on a verification report (CI refuses to ship on a failure).

Metrics (all accuracies in [0, 1]; a value may be written ``0.40`` or ``40%``):

- ``clean_acc``, ``robust_acc`` (per-sample worst case over every attack), ``autoattack_acc``, and
  ``<attack>_acc`` for any attack run (``pgd20_acc``, ``transfer_acc``, ``square_acc``), on the engine;
- ``lower.<metric>``: the lower end of its 95% Wilson interval (gate on what the sample supports, not on the
  point estimate);
- ``drop.<metric>``: float reference minus engine, on the same samples;
- ``worst_class.<metric>``: the lowest per-class accuracy (true label) over the classes present in the sample,
  e.g. ``worst_class.robust_acc>=0.05``: no class may lose all its robustness (class-wise robustness, Xu et al.
  2021, "To be Robust or to be Fair"); a class has about n / C samples, so its accuracy is a noisy estimate;
- ``agreement.clean``, ``agreement.adversarial``: engine/surrogate top-1 agreement;
- ``warnings``: the number of verification warnings (``warnings==0`` fails on any).

OP is one of ``>=``, ``<=``, ``>``, ``<``, ``==``. Exit codes (DESIGN.md): 0 every gate passed, 1 one failed.

A **floor** is a gate that a model without robustness fails: an absolute robust accuracy (``robust_acc``, an
attack's ``<attack>_acc``, plain or with ``lower.``/``worst_class.``) required ``>=`` or ``>`` a value above 0.
Drops and agreement judge what deployment changes, not the model; a gate set without a floor is refused unless
the caller opts out (``--allow-no-floor``, ``verify.allow_no_floor``), and the report then says so.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rkd.errors import UsageError

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq,
}
_GATE = re.compile(r"^\s*([a-z0-9_.:+-]+)\s*(>=|<=|==|>|<)\s*([0-9.eE+-]+)(%?)\s*$")
_PREFIXES = ("lower.", "drop.", "worst_class.")
_SPECIAL = ("agreement.clean", "agreement.adversarial", "warnings")


@dataclass(frozen=True)
class Gate:
    """One check: ``metric op threshold`` (``text`` as the user wrote it, ``source`` where it came from)."""

    metric: str
    op: str
    threshold: float
    text: str
    source: str = "command line"

    def check(self, value: float | None) -> bool:
        """True when ``value`` satisfies the gate; a missing or NaN value fails."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        return _OPS[self.op](float(value), self.threshold)


def parse_gate(text: str, source: str = "command line") -> Gate:
    """Parse ``"robust_acc>=0.40"``, ``"drop.robust_acc<=3%"``, ``"warnings==0"``.

    Raises:
        UsageError: a malformed expression (names the accepted form).
    """
    m = _GATE.match(text or "")
    if not m:
        raise UsageError(
            f"gate '{text}' is not METRIC OP VALUE: write e.g. 'robust_acc>=0.40', 'drop.robust_acc<=0.03', "
            "'lower.autoattack_acc>=0.35', 'worst_class.robust_acc>=0.05', 'agreement.clean>=0.99' or "
            "'warnings==0'"
        )
    metric, op, number, percent = m.groups()
    try:
        value = float(number)
    except ValueError:
        raise UsageError(f"gate '{text}': '{number}' is not a number") from None
    if percent:
        value /= 100.0
    low, high = threshold_range(metric)
    if not (low <= value <= high) or math.isnan(value):
        hint = f": write {value / 100:g} or {value:g}%" if high == 1.0 and 1.0 < abs(value) <= 100.0 else ""
        raise UsageError(f"gate '{text.strip()}': {value:g} is outside [{low:g}, {high:g}], the range of "
                         f"{metric}; accuracies are fractions{hint}")
    return Gate(metric=metric, op=op, threshold=value, text=text.strip().replace(" ", ""), source=source)


def threshold_range(metric: str) -> tuple[float, float]:
    """The values a gate on ``metric`` can sensibly compare with: accuracies and agreements in [0, 1], a drop
    (float minus engine) in [-1, 1], a warning count from 0."""
    if metric == "warnings":
        return 0.0, math.inf
    if metric.startswith("drop."):
        return -1.0, 1.0
    return 0.0, 1.0


def _base(metric: str) -> str:
    for prefix in _PREFIXES:
        if metric.startswith(prefix):
            return metric[len(prefix):]
    return metric


#: What a report says when its gates hold no floor (the run opted out with ``allow_no_floor``).
NO_FLOOR_NOTE = ("no gate sets a floor on robust accuracy: these gates cannot fail for a non-robust model "
                 "(allow_no_floor)")


def is_floor(gate: Gate) -> bool:
    """True when ``gate`` fails a model without robustness: an absolute robust accuracy (not clean, not a drop or
    an agreement) required ``>=``/``>`` a value above 0."""
    base = _base(gate.metric)
    return (not gate.metric.startswith("drop.") and gate.metric not in _SPECIAL and base.endswith("_acc")
            and base != "clean_acc" and gate.op in (">=", ">") and gate.threshold > 0)


def check_floor(gates: Sequence[Gate], *, allow_no_floor: bool, fix: str) -> None:
    """Refuse a gate set with no floor (:func:`is_floor`) unless ``allow_no_floor``; ``fix`` says how to add one
    or opt out (an option on the command line, a key in a recipe).

    Raises:
        UsageError: no floor and no opt-out.
    """
    if allow_no_floor or any(is_floor(g) for g in gates):
        return
    shown = ", ".join(g.text for g in gates) or "none"
    raise UsageError(f"no gate sets a floor on robust accuracy (gates: {shown}), so a model without any robustness "
                     f"passes: {fix}")


def check_gate_metrics(
    gates: Sequence[Gate], attack_names: Sequence[str], *, has_reference: bool,
    reference_attacks: Sequence[str] | None = None, gradient_attacks: bool = True,
) -> None:
    """Fail before any attack runs when a gate names a metric this run will not produce.

    Args:
        attack_names: the engine's attacks (with ``transfer`` when it runs).
        has_reference: whether a float reference runs (``drop.`` gates need it).
        reference_attacks: the reference's own attacks (``drop.`` is defined on these; default: all of
            ``attack_names``).
        gradient_attacks: whether a white-box attack runs (``agreement.adversarial`` is measured on its outputs).

    Raises:
        UsageError: an unknown metric (with the available ones), or a gate on a value this run will not measure.
    """
    available = {"clean_acc", "robust_acc"} | {f"{a}_acc" for a in attack_names}
    on_reference = {"clean_acc", "robust_acc"} | {f"{a}_acc" for a in (
        attack_names if reference_attacks is None else reference_attacks)}
    for gate in gates:
        if gate.metric == "agreement.adversarial" and not gradient_attacks:
            raise UsageError(f"gate '{gate.text}': agreement.adversarial is measured on the white-box attacks' "
                             "outputs and this run has none; add e.g. pgd20 to --attacks")
        if gate.metric in _SPECIAL:
            continue
        base = _base(gate.metric)
        if base not in available:
            hint = ""
            if base.endswith("_acc") and base[:-4] not in attack_names:
                hint = f" (add '{base[:-4]}' to the attacks)"
            raise UsageError(
                f"gate '{gate.text}': unknown metric '{gate.metric}'{hint}; this run measures "
                f"{', '.join(sorted(available))}, with lower./drop./worst_class. prefixes, agreement.clean, "
                "agreement.adversarial, warnings"
            )
        if gate.metric.startswith("drop.") and not has_reference:
            raise UsageError(f"gate '{gate.text}' needs the float reference: verify a bundle file or pass --reference")
        if gate.metric.startswith("drop.") and base not in on_reference:
            raise UsageError(f"gate '{gate.text}': the float reference does not measure {base} (a drop compares "
                             "the same attack on both); "
                             f"gate on {', '.join(sorted('drop.' + m for m in on_reference))}")


def metric_value(report: Mapping[str, Any], metric: str) -> float | None:
    """The value of ``metric`` in a verify report (None when it was not measured)."""
    if metric == "warnings":
        return float(len(report.get("warnings") or []))
    if metric.startswith("agreement."):
        entry = (report.get("agreement") or {}).get(metric.split(".", 1)[1])
        return None if not entry else entry.get("top1_agreement")
    if metric.startswith("drop."):
        return (report.get("drop") or {}).get(metric[5:])
    if metric.startswith("worst_class."):
        return _worst_class(report, metric[len("worst_class."):])
    lower = metric.startswith("lower.")
    name = metric[6:] if lower else metric
    entry = _accuracy_entry(report, name)
    if entry is None:
        return None
    return entry["ci95"][0] if lower else entry["acc"]


def _accuracy_entry(report: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    if name == "robust_acc":
        return report.get("worst_case")
    if name.endswith("_acc"):
        return (report.get("attacks") or {}).get(name[:-4])
    return None


def _worst_class(report: Mapping[str, Any], name: str) -> float | None:
    """The lowest accuracy over the classes with samples, from the report's ``by_class`` section."""
    per_class = ((report.get("by_class") or {}).get("acc") or {})
    key = "worst_case" if name == "robust_acc" else name[:-4] if name.endswith("_acc") else None
    values = [v for v in per_class.get(key) or [] if v is not None]
    return min(values) if values else None


def evaluate_gates(gates: Sequence[Gate], report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each gate's verdict: ``{"gate", "metric", "op", "threshold", "value", "passed", "source", "message"}``."""
    results = []
    for gate in gates:
        value = metric_value(report, gate.metric)
        passed = gate.check(value)
        shown = "not measured" if value is None else f"{value:.4g}"
        message = f"{gate.metric} = {shown}, required {gate.op} {gate.threshold:g}"
        results.append({"gate": gate.text, "metric": gate.metric, "op": gate.op, "threshold": gate.threshold,
                        "value": value, "passed": passed, "source": gate.source, "message": message})
    return results
