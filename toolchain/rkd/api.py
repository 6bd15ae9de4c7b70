"""The Python API: one function per ``rkd`` command, with the command's options as keyword arguments.

Each function takes the options of its command under their long names in snake_case (``--calib-n`` ->
``calib_n``; ``--set`` -> ``overrides``), with the same defaults, checks them the same way and returns a typed
result instead of printing. The command line calls these functions, so the two cannot drift
(``tests/unit/test_api.py`` compares them). Errors raise :class:`rkd.errors.RkdError` subclasses, whose
``exit_code`` is the command's; nothing here exits. Heavy modules (torch, onnx) load inside the functions, so
``import rkd.api`` stays light. See ``docs/API.md``.

The signatures are long on purpose: each mirrors its command's options one to one; the functions themselves
only build a request object and hand it to the library.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rkd.atomic import check_output_path as _check_path
from rkd.errors import UsageError

Log = Callable[[str], None]
#: An option's API name where it is not its CLI long name in snake_case.
RENAMED = {"set": "overrides"}
#: Options that only change what the command prints (every result holds the data).
DISPLAY_ONLY = frozenset({"by_class"})
DEFAULT_CURVE_EPS = "0,2/255,4/255,8/255,12/255,16/255"
_TRT_HINT = "pip install 'rkd[tensorrt]' on a machine with NVIDIA's index, or use NVIDIA's PyTorch container"


@dataclass(frozen=True)
class QuantizeResult:
    """``rkd quantize``'s outcome: the bundle folder and its manifest's ``quantize`` section."""

    bundle: Path
    section: dict[str, Any]


@dataclass(frozen=True)
class ExportResult:
    """``rkd export``'s outcome: the bundle, its manifest, and whether an existing bundle was reused."""

    bundle: Path
    manifest: dict[str, Any]
    reused: bool = False


@dataclass(frozen=True)
class EvalResult:
    """``rkd eval``'s outcome: the JSON report and where it was written."""

    report: dict[str, Any]
    path: Path


@dataclass(frozen=True)
class VerifyResult:
    """``rkd verify``'s outcome: the report (see ``docs/reference``), the files written, the verdict (``pass``,
    ``fail``, ``unreliable`` or ``no gates``) and the exit code the command gives it."""

    report: dict[str, Any]
    paths: dict[str, Path]

    @property
    def verdict(self) -> str:
        return str(self.report["verdict"])

    @property
    def passed(self) -> bool:
        return bool(self.report["passed"])

    @property
    def exit_code(self) -> int:
        from rkd.verify.report import verdict_exit_code

        return 0 if self.passed else verdict_exit_code(self.report)


@dataclass(frozen=True)
class RecipeOutcome:
    """``rkd teacher``/``distill``/``run``'s outcome: the validated recipe (overrides applied) and what the
    library returned: :class:`rkd.train.loop.TrainResult` (checkpoints, held-out history, time) or
    :class:`rkd.pipeline.RunResult` (stages, verify report, ``exit_code``)."""

    recipe: Any
    result: Any


def teacher(
    recipe: str | Path, *, overrides: Sequence[str] | None = None, out: Path | None = None, resume: bool = False,
    device: str | None = None, data_root: str | None = None, progress: Any = None,
) -> RecipeOutcome:
    """``rkd teacher``: adversarially train the recipe's teacher (:func:`rkd.train.teacher.train_teacher`)."""
    from rkd.config import load_recipe
    from rkd.train.teacher import train_teacher

    rec = load_recipe(recipe, list(overrides or []))
    run_dir = Path(out) if out is not None else Path("runs") / rec.name / "teacher"
    _check_path(run_dir, "--out", folder=True)
    return RecipeOutcome(rec, train_teacher(rec, run_dir=run_dir, resume=resume, device=device, data_root=data_root,
                                           progress=progress))


def distill(
    recipe: str | Path, *, teacher: Path | None = None, overrides: Sequence[str] | None = None,
    out: Path | None = None, resume: bool = False, device: str | None = None, data_root: str | None = None,
    progress: Any = None,
) -> RecipeOutcome:
    """``rkd distill``: distil the recipe's teacher into its student (:func:`rkd.train.student.distill_student`)."""
    from rkd.config import load_recipe
    from rkd.train.student import distill_student

    rec = load_recipe(recipe, list(overrides or []))
    run_dir = Path(out) if out is not None else Path("runs") / rec.name / "student"
    _check_path(run_dir, "--out", folder=True)
    return RecipeOutcome(rec, distill_student(rec, run_dir=run_dir, teacher=teacher, resume=resume, device=device,
                                             data_root=data_root, progress=progress))


def run(
    recipe: str | Path, *, overrides: Sequence[str] | None = None, out: Path | None = None, resume: bool = False,
    device: str | None = None, data_root: str | None = None, progress: Any = None, log: Log | None = None,
) -> RecipeOutcome:
    """``rkd run``: every stage of a recipe (:class:`rkd.pipeline.Pipeline`); ``result.exit_code`` is verify's."""
    from rkd.config import load_recipe
    from rkd.pipeline import Pipeline

    rec = load_recipe(recipe, list(overrides or []))
    _check_path(out, "--out", folder=True)
    return RecipeOutcome(rec, Pipeline(rec, run_dir=out, data_root=data_root, device=device, resume=resume,
                                       progress=progress, log=log).run())


def quantize(
    checkpoint: str | Path, *, calib_data: str | None = None, calib_n: int = 512, scheme: str = "cpu",
    method: str = "minmax", out: Path | None = None, data_root: str | None = None, eval_n: int = 1000,
    eval_attacks: str = "pgd20", debug_layers: bool = False, exclude: Sequence[str] | None = None, seed: int = 0,
    force: bool = False, qat: bool = False, epochs: int = 1, qat_method: str = "adv_path",
    teacher: Path | None = None, train_n: int | None = None, qat_lr: float = 0.01, qat_steps: int | None = None,
    device: str = "auto",
) -> QuantizeResult:
    """``rkd quantize``: INT8 model, surrogate and measurements into the checkpoint's bundle
    (:func:`rkd.quantize.pipeline.run_quantize`); ``out`` defaults to the checkpoint's folder/bundle."""
    from dataclasses import replace

    from rkd.data import parse_data_arg
    from rkd.quantize.pipeline import run_quantize
    from rkd.quantize.request import QatOptions, QuantizeRequest

    checkpoint = Path(checkpoint)
    options = QatOptions(method=qat_method, epochs=epochs, lr=qat_lr, teacher=teacher, train_n=train_n,
                         steps=qat_steps) if qat else None
    bundle = Path(out) if out is not None else checkpoint.parent / "bundle"
    request = QuantizeRequest(
        checkpoint=checkpoint, bundle=bundle, scheme=scheme, method=method,
        calib_data=parse_data_arg(calib_data) if calib_data is not None else None, calib_n=calib_n,
        data_root=data_root, eval_n=eval_n, eval_attacks=eval_attacks, debug_layers=debug_layers, force=force,
        seed=seed, nodes_to_exclude=tuple(exclude or ()), device=device, qat=options,
    ).validate()
    if qat:  # resolved now: a missing GPU is exit 3 before the bundle is touched
        from rkd.config import resolve_device

        request = replace(request, device=resolve_device(device))
    _check_path(bundle, "--out", folder=True)
    return QuantizeResult(bundle=bundle, section=run_quantize(request))


def _engine_builder() -> Callable[..., Any]:
    """``build_bundle_engine`` once tensorrt and a CUDA GPU are known to be there (else exit 3, nothing written)."""
    from rkd.errors import MissingDependencyError

    try:
        from rkd.deploy.tensorrt_build import build_bundle_engine, import_tensorrt, require_cuda
    except ImportError as exc:
        raise MissingDependencyError(
            f"--target trt cannot load rkd.deploy.tensorrt_build ({exc}); {_TRT_HINT}") from None
    import_tensorrt()
    require_cuda("--target trt (building a TensorRT engine)")
    return build_bundle_engine


def _reusable(out_dir: Path, checkpoint: Path) -> bool:
    """True when ``out_dir`` is a valid bundle exported from this very checkpoint (same weights sha256)."""
    from rkd.deploy.bundle import read_manifest
    from rkd.errors import RkdError
    from rkd.models.checkpoint import file_sha256

    if not (out_dir / "manifest.json").is_file() or not checkpoint.is_file():
        return False
    try:
        manifest = read_manifest(out_dir, verify=True)
    except RkdError:
        return False
    return manifest.get("source", {}).get("sha256") == file_sha256(checkpoint)


def export(
    checkpoint: str | Path, *, target: str = "onnx", out: Path | None = None, force: bool = False,
    parity_data: str | None = None, data_root: str | None = None, parity_n: int = 256, opset: int = 17,
    precision: str = "int8",
) -> ExportResult:
    """``rkd export``: ``model.onnx`` + manifest with torch/ONNX parity (:func:`rkd.deploy.export.export_bundle`);
    ``target="trt"`` also builds a TensorRT engine of ``precision`` (int8 needs the bundle's model.int8.onnx)."""
    from rkd.data import parse_data_arg
    from rkd.deploy.bundle import read_manifest
    from rkd.deploy.export import RECORDED, export_bundle

    if target not in ("onnx", "trt"):
        raise UsageError(f"unknown target '{target}'; choose onnx or trt")
    if precision not in ("int8", "fp16", "fp32"):
        raise UsageError(f"unknown precision '{precision}'; choose int8, fp16 or fp32")
    checkpoint = Path(checkpoint)
    chosen = parse_data_arg(parity_data) if parity_data is not None else RECORDED
    bundle = Path(out) if out is not None else checkpoint.parent / "bundle"
    if bundle.resolve() == Path.cwd().resolve() or not bundle.resolve().name:
        raise UsageError(f"--out '{bundle}' is the current folder; give a bundle folder inside it")
    _check_path(bundle, "--out", folder=True)
    build = _engine_builder() if target == "trt" else None
    reused = build is not None and not force and _reusable(bundle, checkpoint)
    if build is not None and not reused and precision == "int8":
        raise UsageError(
            "--target trt --precision int8 builds from the bundle's model.int8.onnx, which a fresh "
            f"export lacks: export, quantize into {bundle}, then rerun this; or use --precision fp16"
        )
    if not reused:
        export_bundle(checkpoint, bundle, force=force, parity_data=chosen, data_root=data_root, parity_n=parity_n,
                      opset=opset)
    if build is not None:
        build(bundle, precision=precision)
    return ExportResult(bundle=bundle, manifest=read_manifest(bundle, verify=False), reused=reused)


def _floats(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"'{text}' is not a comma-separated list of numbers (e.g. 0.5,0.5,0.5)") from None


def evaluate(
    checkpoint: str | Path, *, data: str = "cifar10", data_root: str | None = None, split: str = "test",
    n: int = 1000, sample: str = "first", attacks: str = "clean,fgsm,pgd20,cw,autoattack", eps: str = "8/255",
    alpha: str = "2/255", norm: str = "linf", seed: int = 0, batch_size: int = 256, device: str = "auto",
    report: Path | None = None, aa_state: Path | None = None, model: str | None = None,
    num_classes: int | None = None, width: float = 1.0, depth: int | None = None, widen_factor: int | None = None,
    mean: str | None = None, std: str | None = None, log: Log | None = None,
) -> EvalResult:
    """``rkd eval``: clean and adversarial accuracy of a checkpoint (:func:`rkd.verify.evaluate.evaluate_model`);
    the JSON report goes to ``report`` (default: ``<checkpoint stem>.eval.json`` beside it)."""
    import json

    from rkd.atomic import atomic_write_text
    from rkd.config import parse_radius, resolve_device
    from rkd.data import parse_data_arg
    from rkd.verify.evaluate import EvalRequest, evaluate_model, load_model_for_eval
    from rkd.verify.suite import check_suite, parse_attacks

    checkpoint = Path(checkpoint)
    if norm not in ("linf", "l2"):
        raise UsageError(f"--norm must be linf or l2, got '{norm}'")
    if sample not in ("first", "random"):
        raise UsageError(f"--sample must be first or random, got '{sample}'")
    try:
        eps_v, alpha_v = parse_radius(eps, norm), parse_radius(alpha, norm)
    except ValueError as exc:
        raise UsageError(f"--eps/--alpha: {exc}") from None
    if n < 1:
        raise UsageError(f"--n must be at least 1, got {n}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    check_suite(parse_attacks(attacks), seed=seed)  # fail fast on a typo, before loading anything
    path = Path(report) if report is not None else checkpoint.with_name(checkpoint.stem + ".eval.json")
    _check_path(path, "--report", folder=False)
    _check_path(aa_state, "--aa-state", folder=False)
    dataset, options = parse_data_arg(data)
    dev = resolve_device(device)
    net, info = load_model_for_eval(checkpoint, model=model, num_classes=num_classes, width=width, depth=depth,
                                    widen_factor=widen_factor, mean=_floats(mean), std=_floats(std))
    request = EvalRequest(
        dataset=dataset, data_options=options, data_root=data_root, split=split, n=n, sample=sample,
        attacks=attacks, eps=eps_v, eps_text=eps, alpha=alpha_v, norm=norm, seed=seed, batch_size=batch_size,
        device=dev, autoattack_state=str(aa_state) if aa_state else None,
    )
    rep = evaluate_model(net, request, model_info=info, log=log)
    atomic_write_text(path, json.dumps(rep, indent=2) + "\n")
    return EvalResult(report=rep, path=path)


def verify(
    engine: str | Path, *, data: str | None = None, data_root: str | None = None, split: str = "test",
    n: int | None = None, sample: str | None = None, attacks: str | None = None, eps: str | None = None,
    norm: str | None = None, alpha: str = "2/255", seed: int = 0, gate: Sequence[str] | None = None,
    profile: str | None = None, overrides: Sequence[str] | None = None, fail_on_warnings: bool | None = None,
    report: Path | None = None, junit: Path | None = None, curve: bool = False, curve_eps: str = DEFAULT_CURVE_EPS,
    state: Path | None = None, surrogate: Path | None = None, reference: Path | None = None,
    transfer: bool | None = None, batch_size: int = 256, device: str = "auto", no_gates: bool = False,
    mean: str | None = None, std: str | None = None, pixel_scale: float | None = None, layout: str | None = None,
    channels: str | None = None, input_size: int | None = None, label_map: Path | None = None,
    reference_model: str | None = None, allow_no_floor: bool = False, log: Log | None = None,
) -> VerifyResult:
    """``rkd verify``: attack the artifact, judge the gates and write the reports into ``report`` (default
    ``verify-<artifact stem>``); :func:`rkd.verify.options.request_from_options` builds the request,
    :func:`rkd.verify.verification.verify_artifact` runs it. ``profile``: an export profile (name or YAML path),
    with ``overrides`` (``key.path=value``) applied to it. A failed gate is a result (``verdict``, ``exit_code``),
    not an exception."""
    import os

    from rkd.verify.options import request_from_options
    from rkd.verify.report import report_names, write_reports
    from rkd.verify.verification import verify_artifact

    engine = Path(engine)
    request = request_from_options(
        engine, data=data, data_root=data_root, split=split, n=n, sample=sample, attacks=attacks, eps=eps,
        norm=norm, alpha=alpha, seed=seed, gate=gate, profile=profile, overrides=overrides,
        fail_on_warnings=fail_on_warnings, curve=curve, curve_eps=curve_eps, state=state, surrogate=surrogate,
        reference=reference, transfer=transfer, batch_size=batch_size, device=device, no_gates=no_gates,
        mean=mean, std=std, pixel_scale=pixel_scale, layout=layout, channels=channels, input_size=input_size,
        label_map=label_map, reference_model=reference_model, allow_no_floor=allow_no_floor,
    )
    folder = Path(report) if report is not None else Path(f"verify-{engine.stem if engine.is_file() else engine.name}")
    _check_path(folder, "--report", folder=True)
    for name in report_names(curve=curve, junit=junit is None):
        if (folder / name).is_dir():
            raise UsageError(f"--report '{folder}' holds a folder named {name}, where the report goes: move it "
                             "or choose another --report")
    _check_path(junit, "--junit", folder=False)
    _check_path(state, "--state", folder=True)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        _check_path(Path(summary), "$GITHUB_STEP_SUMMARY", folder=False)
    rep = verify_artifact(request, log=log)
    return VerifyResult(report=rep, paths=write_reports(rep, folder, junit=junit))
