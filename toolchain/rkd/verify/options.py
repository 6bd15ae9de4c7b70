"""``rkd verify``'s options -> a :class:`rkd.verify.request.VerifyRequest`: parse and check each value (a bad one
is a one-line UsageError naming the option), read the export profile with its ``--set`` overrides, and let
:func:`rkd.verify.request.request_from_config` apply the precedence (option > profile > default)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rkd.errors import UsageError
from rkd.verify.request import VerifyRequest

#: How the refusal of a gate set without a floor says to fix it, in the command's words.
FLOOR_FIX = ("add --gate 'robust_acc>=X' with X what your model must keep (e.g. 'lower.robust_acc>=0.40'), or "
             "--allow-no-floor to judge only what deployment changes")


def resolve_verify_device(spec: str, engine: Path) -> str:
    """``auto`` -> cuda for a TensorRT engine, cpu otherwise; a TensorRT engine on the CPU is refused (exit 2),
    one without a visible GPU is exit 3."""
    from rkd.config import resolve_device
    from rkd.deploy.runtimes import ENGINE_SUFFIXES
    from rkd.errors import MissingDependencyError

    is_engine = engine.suffix.lower() in ENGINE_SUFFIXES
    if is_engine and spec == "cpu":
        raise UsageError(f"'{engine.name}' is a TensorRT engine, which runs only on a CUDA GPU: drop --device cpu "
                         "(or verify the bundle's model.int8.onnx on the CPU)")
    wanted = spec if spec != "auto" else "cuda" if is_engine else "cpu"
    try:
        return resolve_device(wanted)
    except MissingDependencyError:
        if not is_engine:
            raise
        raise MissingDependencyError(f"'{engine.name}' is a TensorRT engine and no CUDA GPU is visible here: verify "
                                     "it on the machine it was built for (or the bundle's model.int8.onnx on the "
                                     "CPU)") from None


def _choice(option: str, value: str | None, allowed: Sequence[str]) -> str | None:
    if value is not None and value not in allowed:
        raise UsageError(f"{option} must be one of {', '.join(allowed)}, got '{value}'")
    return value


def _numbers(n: int | None, attacks: str | None, eps: str | None, norm: str | None, alpha: str,
             curve_eps: str) -> tuple[float | None, float, list[float]]:
    """eps, alpha and the curve's radii as numbers; ``n`` and ``attacks`` get the checks a profile's get."""
    from pydantic import ValidationError

    from rkd.config import VerifyConfig, parse_eps, parse_radius

    try:
        VerifyConfig(**{k: v for k, v in (("n", n), ("attacks", attacks)) if v is not None})
        eps_v = None if eps is None else parse_radius(eps, "l2") if norm == "l2" else parse_eps(eps)
        alpha_v = parse_radius(alpha, norm or "linf")
        curve_values = [0.0 if v.strip() in ("0", "0/255") else parse_eps(v) for v in curve_eps.split(",")]
    except ValidationError as exc:
        err = exc.errors()[0]
        where = f"--{err['loc'][0]}: " if err.get("loc") else ""
        raise UsageError(where + err["msg"].removeprefix("Value error, ")) from None
    except ValueError as exc:
        raise UsageError(f"--eps/--alpha/--curve-eps: {exc}") from None
    return eps_v, alpha_v, curve_values


def _data(data: str | None, input_size: int | None) -> tuple[str | None, dict[str, Any] | None]:
    from rkd.data import parse_data_arg

    dataset, options = parse_data_arg(data) if data is not None else (None, None)
    if input_size is not None:
        if dataset != "imagefolder":
            raise UsageError("--input-size decodes an image folder at that size: it needs --data imagefolder:DIR "
                             "(other data sets have their own size)")
        options = {**(options or {}), "image_size": input_size}
    return dataset, options


def request_from_options(engine: Path, **o: Any) -> VerifyRequest:
    """The request of ``rkd verify ENGINE`` with options ``o`` (the keywords of :func:`rkd.api.verify`, which
    passes every one).

    Raises:
        UsageError: a bad value, ``overrides`` without a profile, ``no_gates`` with gates.
        RecipeError: a profile that is missing or does not validate (after its overrides).
    """
    from rkd.config import VerifyConfig, load_profile
    from rkd.deploy.adapters import parse_preprocessing
    from rkd.verify.gates import parse_gate
    from rkd.verify.verification import request_from_config

    norm = _choice("--norm", o["norm"], ("linf", "l2"))
    sample = _choice("--sample", o["sample"], ("first", "random"))
    if o["overrides"] and not o["profile"]:
        raise UsageError("--set overrides keys of an export profile: give --profile NAME too")
    prof = load_profile(o["profile"], overrides=list(o["overrides"] or [])) if o["profile"] else None
    eps_v, alpha_v, curve_values = _numbers(o["n"], o["attacks"], o["eps"], norm, o["alpha"], o["curve_eps"])
    dataset, data_options = _data(o["data"], o["input_size"])
    preprocessing = parse_preprocessing(mean=o["mean"], std=o["std"], scale=o["pixel_scale"],
                                        layout=_choice("--layout", o["layout"], ("nchw", "nhwc")),
                                        channels=_choice("--channels", o["channels"], ("rgb", "bgr")))
    if o["reference_model"] is not None and o["reference"] is None:
        raise UsageError("--reference-model names the architecture of --reference: give --reference FILE too")
    flags = {"n": o["n"], "attacks": o["attacks"], "eps": eps_v, "norm": norm, "dataset": dataset, "sample": sample,
             "fail_on_warnings": o["fail_on_warnings"], "transfer": o["transfer"],
             "allow_no_floor": True if o["allow_no_floor"] else None}  # a profile cannot set it
    request = request_from_config(
        engine, prof.verify if prof else VerifyConfig(), source=f"profile {prof.name}" if prof else "default",
        flags=flags, extra_gates=[parse_gate(g) for g in o["gate"] or []],
        required_n=prof.verify.n if prof and prof.verify.gates else None,
        data_options=data_options, data_root=o["data_root"], split=o["split"], eps_text=o["eps"], alpha=alpha_v,
        seed=o["seed"], batch_size=o["batch_size"], device=resolve_verify_device(o["device"], engine),
        state=o["state"], curve_eps=curve_values if o["curve"] else None, surrogate=o["surrogate"],
        reference=o["reference"],
        profile={"name": prof.name, "runtime": prof.runtime, "precision": prof.precision} if prof else None,
        require_gates=not o["no_gates"], preprocessing=preprocessing, label_map=o["label_map"],
        reference_model=o["reference_model"], floor_fix=FLOOR_FIX,
    )
    if o["no_gates"] and (request.gates or request.fail_on_warnings):
        raise UsageError("--no-gates with gates (--gate, the profile's or --fail-on-warnings): drop one of them")
    return request
