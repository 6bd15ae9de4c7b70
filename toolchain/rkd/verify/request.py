"""What one ``rkd verify`` run checks, decided in one place and then fixed.

A :class:`VerifyRequest` is built once (:func:`request_from_config`: a command-line flag wins over what a
profile or recipe sets, which wins over the defaults) and completed once against the opened artifact
(:func:`resolve_against`: the data set and threat model the bundle's manifest or the checkpoint records fill
what nobody stated). It is frozen: every later step reads it, none edits it. ``sources`` says where each
deciding value came from, and the report records it, so a verdict can be traced to what set its threat model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rkd.deploy.adapters import Preprocessing
from rkd.errors import UsageError
from rkd.verify.gates import Gate

DEFAULT_ATTACKS = "pgd20,autoattack"
DEFAULT_EPS = 8 / 255
DEFAULT_NORM = "linf"
#: Below these engine/surrogate top-1 agreements the surrogate's gradients are suspect (a warning).
MIN_CLEAN_AGREEMENT = 0.99
MIN_ADVERSARIAL_AGREEMENT = 0.95
#: From this share of attacked samples with zero or non-finite input gradients on, gradient attacks say nothing.
MAX_ZERO_GRADIENT_SHARE = 0.05
DEFAULT = "default"
GIVEN = "given"
#: Where ``resolve_against`` finds a data set nobody stated.
RECORDED = ("the bundle's manifest", "the checkpoint")
#: The smallest radius a gate may judge: one 8-bit intensity level. Below it an attack cannot change a stored
#: image at all, so every model "keeps" its accuracy and a gate would pass a model with no robustness.
MIN_JUDGED_EPS = 1 / 255
#: The settings whose origin ``VerifyRequest.sources`` records.
SOURCED = ("dataset", "n", "sample", "attacks", "eps", "norm", "fail_on_warnings", "transfer", "allow_no_floor")
#: A config field's name where it differs from the request's.
_CONFIG_FIELDS = {"n": "n", "sample": "sample", "attacks": "attacks", "eps": "eps",
                  "fail_on_warnings": "fail_on_warnings", "transfer": "transfer", "allow_no_floor": "allow_no_floor"}


@dataclass(frozen=True)
class VerifyRequest:
    """What to verify and how; see ``rkd verify --help`` for each field. ``sources`` maps a setting of
    :data:`SOURCED` to where its value came from (``--eps``, ``profile x86-cpu-int8``, ``the bundle's manifest``,
    ``default``)."""

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
    gates: Sequence[Gate] = ()
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
    max_zero_gradient_share: float = MAX_ZERO_GRADIENT_SHARE
    profile: dict[str, Any] | None = None
    runtime_options: dict[str, Any] | None = None  # passed to the runtime (e.g. ONNX Runtime providers)
    preprocessing: Preprocessing | None = None  # what a model rkd did not make wants instead of [0, 1] RGB NCHW
    label_map: str | Path | None = None  # JSON: data-set class name -> model output index
    reference_model: str | None = None  # the architecture of a --reference that is a plain state_dict
    require_gates: bool = False  # refuse a run that could not fail (rkd verify without --no-gates)
    allow_no_floor: bool = False  # judge gates without a floor on robust accuracy (drops/agreement only)
    floor_fix: str = ("add a gate such as 'robust_acc>=0.40' (what the model must keep), or set allow_no_floor to "
                      "judge only what deployment changes")  # how the refusal says to fix it
    sources: Mapping[str, str] = field(default_factory=dict)

    def source(self, key: str) -> str:
        """Where ``key``'s value came from (``default`` when nobody set it)."""
        return self.sources.get(key, DEFAULT)


def request_from_config(
    artifact: str | Path, cfg: Any, *, source: str, required_n: int | None = None,
    flags: Mapping[str, Any] | None = None, extra_gates: Sequence[Gate] = (), **kw: Any,
) -> VerifyRequest:
    """A :class:`VerifyRequest` from a recipe's or profile's ``verify`` section (:class:`rkd.config.VerifyConfig`).

    Precedence, recorded in ``sources``: a ``flags`` entry that is not None (the command line's, keyed by
    request field, labelled ``--field``) > a field ``cfg`` sets itself or a ``kw`` setting (labelled ``source``) >
    the default. The config's gates are labelled with ``source``; ``extra_gates`` (the command line's) follow
    them; ``kw`` sets fields the config has no say in (data root, device, state, ...).
    """
    from rkd.verify.gates import parse_gate

    stated = set(getattr(cfg, "model_fields_set", ()))
    values: dict[str, Any] = {k: getattr(cfg, f) for k, f in _CONFIG_FIELDS.items()}
    sources = {k: source for k, f in _CONFIG_FIELDS.items() if f in stated}
    sources.update({k: source for k in SOURCED if kw.get(k) is not None})
    values.update(kw)
    for key, value in (flags or {}).items():
        if value is not None:
            values[key] = value
            if key in SOURCED:
                sources[key] = f"--{key.replace('_', '-')}"
    gates = [parse_gate(g, source=source) for g in cfg.gates] + list(extra_gates)
    return VerifyRequest(artifact=artifact, gates=gates, required_n=required_n, sources=sources, **values)


def resolve_against(request: VerifyRequest, target: Any, *,
                    log: Callable[[str], None] | None = None) -> VerifyRequest:
    """``request`` completed from what the opened artifact records: the data set (and, for an image folder, the
    model's input size and crop) when none was given, the norm and eps when none were stated; ``sources`` says
    which. Every field the run reads is set in the result (``dataset``, ``norm`` and ``eps`` are not None).

    Raises:
        UsageError: an unknown norm; a norm other than the bundle's with no eps for it.
    """
    from rkd.data import FALLBACK_DATASET, fit_to_model, recorded_data

    sources = dict(request.sources)
    for key in ("dataset", "eps", "norm"):  # set on the request itself (a library caller): given
        if getattr(request, key) is not None:
            sources.setdefault(key, GIVEN)
    if request.dataset is None:
        record, where = target.trained_on()
        chosen = recorded_data(record, split=request.split, n=request.n, image_size=target.image_size)
        sources["dataset"] = where if chosen is not None else DEFAULT
        dataset, options = chosen or (FALLBACK_DATASET, {})
        request = replace(request, dataset=dataset, data_options={**options, **(request.data_options or {})})
        if log is not None:
            log(f"data: {dataset}" + (f" (recorded in {where}; --data overrides)" if chosen is not None else
                                      " (nothing recorded; --data overrides)"))
    else:  # given explicitly: an image folder is decoded at the model's size and crop
        record, _ = target.trained_on()
        request = replace(request, data_options=fit_to_model(request.dataset, request.data_options, record,
                                                             input_size=target.image_size))

    tm = target.threat_model or {}
    recorded_at = target.threat_model_source or DEFAULT
    norm = request.norm or str(tm.get("norm", DEFAULT_NORM))
    if request.norm is None:
        sources["norm"] = recorded_at if "norm" in tm else DEFAULT
    if norm not in ("linf", "l2"):
        raise UsageError(f"norm must be linf or l2, got {norm!r}")
    eps = request.eps
    if eps is None:
        if tm.get("norm", DEFAULT_NORM) != norm:
            raise UsageError(f"verifying {norm} but the bundle's threat model is {tm.get('norm')} "
                             f"eps={float(tm.get('eps', 0)):.5g}: give --eps for the {norm} ball")
        eps = float(tm.get("eps", DEFAULT_EPS))
        sources["eps"] = recorded_at if "eps" in tm else DEFAULT
    if log is not None:
        shown = f"{eps * 255:g}/255" if norm == "linf" else f"{eps:g}"
        log(f"threat model: {norm} eps={shown} (eps from {sources.get('eps', DEFAULT)}, "
            f"norm from {sources.get('norm', DEFAULT)})")
    return replace(request, norm=norm, eps=eps, sources=sources)
