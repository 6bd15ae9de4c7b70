"""What ``rkd verify`` attacks: the shipped artifact, its gradient surrogate and the float reference.

Chosen from the file (DESIGN.md, "Verification semantics"):

====================  ===============  ==========================================  =============================
artifact              runtime          gradient surrogate                          float reference
====================  ===============  ==========================================  =============================
``*.onnx`` (QDQ)      ONNX Runtime     the same file interpreted in torch          the bundle's ``model.onnx``
                                       (fake-quant with the file's own scales)
``*.onnx`` (float)    ONNX Runtime     the same file interpreted in torch (exact)  the file itself
``*.engine/.plan``    TensorRT         the engine's source ONNX from the manifest  the bundle's ``model.onnx``
``*.safetensors``     torch            the checkpoint itself (exact)               the checkpoint itself
====================  ===============  ==========================================  =============================

When the artifact sits in an rkd bundle (a ``manifest.json`` beside it) every file's sha256 is checked, the
threat model and classes come from the manifest, and an engine whose source ONNX changed since it was built
is refused. ``surrogate=``/``reference=`` override the choice (an rkd checkpoint or an ONNX file; a reference
may also be a plain state_dict of a registered architecture).

A model rkd did not make (no manifest) runs behind the input convention the user states
(:class:`~rkd.deploy.adapters.Preprocessing`), and so do its interpreted surrogate and an ONNX reference. If
the interpreter cannot differentiate the file, the float reference gives the gradients (BPDA), or, for a
suite of gradient-free attacks only, there is no surrogate and the report says that no white-box attack ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rkd.deploy.adapters import AdaptedRuntime, Preprocessing
from rkd.deploy.onnx_files import stamped_threat_model
from rkd.deploy.runtimes import CHECKPOINT_SUFFIXES, ENGINE_SUFFIXES, ONNX_SUFFIXES, Runtime, open_runtime
from rkd.errors import CheckpointError, UnsupportedOperatorError, UsageError
from rkd.verify.differentiable import INTERPRETER_GRADIENTS, is_integer_graph, load_differentiable

__all__ = ["INTERPRETER_GRADIENTS", "VerifyTarget", "load_differentiable", "open_target"]

MANIFEST = "manifest.json"
FLOAT_ONNX = "model.onnx"


@dataclass
class VerifyTarget:
    """An opened artifact: ``runtime`` (forward values), ``surrogate`` (gradients), ``reference`` (the float
    student, or None), the bundle ``manifest`` (or None), and a description of each for the report."""

    path: Path
    kind: str  # onnx-int8 | onnx-float | tensorrt | checkpoint
    runtime: Runtime
    surrogate: nn.Module | None  # None: no gradients here (black-box attacks only)
    reference: nn.Module | None
    manifest: dict[str, Any] | None
    info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    stamped_threat_model: dict[str, Any] | None = None  # recorded in the (hashed) model file itself

    @property
    def threat_model_source(self) -> str | None:
        """Where :attr:`threat_model` comes from: the model file (covered by its sha256), the bundle's manifest
        (covered by no hash), or None when neither records one."""
        if self.stamped_threat_model is not None:
            return f"the model file ({self.info.get('threat_model_file') or self.path.name})"
        return f"the bundle's manifest ({MANIFEST}: no hash covers it)" if self.threat_model is not None else None

    @property
    def num_classes(self) -> int | None:
        """Classes the artifact predicts, when the manifest or the checkpoint says."""
        if self.manifest is not None:
            return (self.manifest.get("output") or {}).get("num_classes")
        spec = getattr(self.surrogate, "spec", None)
        return getattr(spec, "num_classes", None)

    @property
    def class_names(self) -> list[str] | None:
        """The class names the bundle's manifest (or the checkpoint's training data) records, when it does."""
        if self.manifest is not None:
            names = self.manifest.get("classes")
        else:
            meta = getattr(self.runtime, "metadata", None)
            data = meta.get("data") if isinstance(meta, dict) else None
            names = data.get("classes") if isinstance(data, dict) else None
        return [str(c) for c in names] if isinstance(names, list) and names else None

    @property
    def threat_model(self) -> dict[str, Any] | None:
        """The threat model the bundle was built for (``{"norm", "eps"}``, eps a float), when recorded.

        Raises:
            CheckpointError: a recorded threat model that is not one (an unknown norm, an eps that is no radius).
        """
        tm = (self.manifest or {}).get("threat_model") or None
        stamped = self.stamped_threat_model
        if tm is None:
            return stamped
        where = f"'{self.path.parent / MANIFEST}': threat_model"
        if not isinstance(tm, dict):
            raise CheckpointError(f"{where} is {tm!r}, not a mapping; re-export the bundle")
        norm = tm.get("norm", "linf")
        if norm not in ("linf", "l2"):
            raise CheckpointError(f"{where}.norm is {norm!r}, not linf or l2; re-export the bundle")
        out = dict(tm, norm=norm)
        if "eps" in tm:
            from rkd.attacks.checks import check_eps

            eps = tm["eps"]
            try:
                if isinstance(eps, bool) or not isinstance(eps, (int, float)):
                    raise UsageError("not a number")
                out["eps"] = check_eps(eps, norm)
            except UsageError:
                raise CheckpointError(f"{where}.eps is {eps!r}, not a {norm} radius; re-export the bundle") from None
        if stamped is not None and (stamped["norm"] != out["norm"] or "eps" not in out
                                    or abs(stamped["eps"] - out["eps"]) > 1e-9 * max(1.0, stamped["eps"])):
            raise CheckpointError(
                f"{where} ({out['norm']} eps={out.get('eps')}) differs from the one recorded in the model file "
                f"({stamped['norm']} eps={stamped['eps']:.6g}), which its sha256 covers: the manifest was edited; "
                "re-export the bundle, or state the threat model (--eps, --norm)")
        return stamped or out

    def trained_on(self) -> tuple[dict[str, Any] | None, str]:
        """The data set the model was trained on (``{"dataset", "options"}``, or None) and where that is recorded:
        the bundle's manifest, or a checkpoint's metadata."""
        from rkd.deploy.bundle import manifest_data

        if self.manifest is not None:
            return manifest_data(self.manifest), "the bundle's manifest"
        meta = getattr(self.runtime, "metadata", None)
        data = meta.get("data") if isinstance(meta, dict) else None
        return (data if isinstance(data, dict) else None), "the checkpoint"

    @property
    def image_size(self) -> int | None:
        """The side of the model's square input, when the manifest records it or the model file declares it."""
        shape = ((self.manifest or {}).get("input") or {}).get("shape")
        if self.manifest is None:
            shape = getattr(self.runtime, "input_shape", None)
        if isinstance(shape, (list, tuple)) and len(shape) == 4 and isinstance(shape[2], int) and shape[2] == shape[3]:
            return shape[2]
        return None

    def with_outputs(self, outputs: list[int], probe: torch.Tensor) -> VerifyTarget:
        """This target scoring only the model outputs ``outputs`` (a label map), in that order: the runtime, and
        the surrogate and reference where they score as many classes as the engine (one ``probe`` each)."""
        from rkd.deploy.adapters import AdaptedModule

        width = int(self.runtime.predict(probe).shape[1])

        def adapt(model: nn.Module | None) -> nn.Module | None:
            if model is None:
                return None
            with torch.inference_mode():
                same = int(model(probe.to(next(iter(model.parameters()), probe).device)).shape[1]) == width
            return AdaptedModule(model, None, outputs).eval() if same else model

        surrogate = adapt(self.surrogate)
        reference = surrogate if self.reference is self.surrogate else adapt(self.reference)
        return replace(self, runtime=AdaptedRuntime(self.runtime, None, outputs), surrogate=surrogate,
                       reference=reference)

    @property
    def white_box(self) -> bool:
        """Whether white-box attacks can run: there is a surrogate to take gradients from."""
        return self.surrogate is not None


def _bundle_manifest(path: Path) -> dict[str, Any] | None:
    from rkd.deploy.bundle import read_manifest

    if not (path.parent / MANIFEST).is_file():
        return None
    manifest = read_manifest(path.parent, verify=True)
    if path.name not in (manifest.get("files") or {}):
        raise CheckpointError(
            f"'{path.name}' is not listed in {path.parent / MANIFEST}: it was not written by rkd for this bundle; "
            "re-export, or copy the file out of the bundle to verify it alone"
        )
    return manifest


def _engine_source(path: Path, manifest: dict[str, Any] | None) -> Path:
    """The ONNX file a TensorRT engine was built from, checked against the sha256 recorded at build time."""
    if manifest is None:
        raise UsageError(
            f"'{path}' has no bundle manifest beside it, so its source ONNX is unknown: pass --surrogate "
            "(the QDQ .onnx it was built from)"
        )
    record = (manifest.get("engines") or {}).get(path.name)
    if not isinstance(record, dict) or not record.get("source_onnx"):
        raise CheckpointError(f"the manifest has no build record for engine '{path.name}'; rebuild it with "
                              "rkd export --target trt")
    if record["source_onnx"] not in (manifest.get("files") or {}):
        raise CheckpointError(f"engine '{path.name}' names {record['source_onnx']!r} as its source ONNX, which the "
                              "bundle does not hold; rebuild it with rkd export --target trt")
    source = path.parent / record["source_onnx"]
    current = ((manifest.get("files") or {}).get(record["source_onnx"]) or {}).get("sha256")
    if current != record.get("source_onnx_sha256"):
        raise CheckpointError(
            f"engine '{path.name}' was built from an older '{record['source_onnx']}' (sha256 "
            f"{str(record.get('source_onnx_sha256'))[:12]}..., now {str(current)[:12]}...): it is stale; rebuild "
            "it with rkd export --target trt --force"
        )
    return source


def _reference_classes(spec: str, runtime: Runtime, image_size: int | None) -> tuple[str, int]:
    """``[LIBRARY:]NAME[:CLASSES]`` of ``--reference-model`` as ``([LIBRARY:]NAME, CLASSES)``; CLASSES defaults
    to the engine's output width (one probe)."""
    from rkd.models.library import parse_model_spec

    parsed = parse_model_spec(spec)
    name = f"{parsed.library}:{parsed.name}" if parsed.library else parsed.name
    if parsed.classes is not None:
        return name, parsed.classes
    declared = runtime.input_shape or ()
    side = declared[2] if len(declared) == 4 and isinstance(declared[2], int) else image_size or 32
    side_w = declared[3] if len(declared) == 4 and isinstance(declared[3], int) else side
    return name, int(runtime.predict(torch.zeros(1, 3, side, side_w)).shape[1])


def open_target(
    artifact: str | Path,
    *,
    surrogate: str | Path | None = None,
    reference: str | Path | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    runtime_options: dict[str, Any] | None = None,
    preprocessing: Preprocessing | None = None,
    reference_model: str | None = None,
    image_size: int | None = None,
    need_gradients: bool = True,
) -> VerifyTarget:
    """Open ``artifact`` (a file, or a bundle directory: its ``model.int8.onnx``, else ``model.onnx``) with its
    surrogate and float reference as in the module table. ``runtime_options`` go to the runtime's constructor.

    A model rkd did not make (an ONNX file or engine with no bundle manifest) may want another input
    (``preprocessing``): it then runs behind it, as do its interpreted surrogate and an ONNX reference.
    ``reference_model`` names the architecture of a ``reference`` that is a plain state_dict. When the
    interpreter cannot differentiate the file, the float reference gives the gradients (BPDA) if there is one;
    else, with ``need_gradients`` False (a suite of gradient-free attacks), the target has no surrogate.

    Raises:
        UsageError: unknown suffix, missing file, an engine without a manifest or surrogate, preprocessing
            stated for an rkd model (which normalises its own input).
        UnsupportedOperatorError: operators the interpreter cannot differentiate, no reference to take
            gradients from and a suite that needs them.
        CheckpointError: a changed bundle file, a stale engine, unreadable files.
        MissingDependencyError: the runtime's backend is not installed (exit 3).
    """
    path = _artifact_file(artifact)
    manifest = _bundle_manifest(path) if path.suffix.lower() not in CHECKPOINT_SUFFIXES else None
    _refuse_preprocessing(path, manifest, preprocessing)
    engine_source = None
    if path.suffix.lower() in ENGINE_SUFFIXES:  # refuse a stale engine before touching TensorRT
        engine_source = Path(surrogate) if surrogate is not None else _engine_source(path, manifest)
    runtime: Runtime = open_runtime(path, device=device, batch_size=batch_size, **(runtime_options or {}))
    if preprocessing is not None:
        runtime = AdaptedRuntime(runtime, preprocessing)
    grads = _own_gradients(path, runtime, engine_source, surrogate, device, preprocessing)
    warnings: list[str] = []
    if reference is not None:
        name, classes = (_reference_classes(reference_model, runtime, image_size) if reference_model is not None
                         else (None, None))
        ref_model, ref_info = load_differentiable(reference, device, preprocessing=preprocessing, model=name,
                                                  num_classes=classes)
    else:
        ref_model, ref_info = _default_reference(path, grads, runtime, manifest, surrogate, device, warnings)
    if grads.kind == "onnx-float" and surrogate is None and grads.model is not None:
        grads.info = {**grads.info, "kind": "onnx-interpreter (exact gradients)"}
    if grads.unsupported is not None:
        _gradients_from_reference(grads, grads.unsupported, ref_model, ref_info, need_gradients, warnings)
    return _target(path, runtime, grads, ref_model, ref_info, manifest, engine_source, warnings)


def _artifact_file(artifact: str | Path) -> Path:
    """The file :func:`open_target` opens: ``artifact`` itself, or a bundle directory's ``model.int8.onnx`` (else
    its ``model.onnx``); one whose suffix names a runtime."""
    path = Path(artifact)
    if path.is_dir():
        for name in ("model.int8.onnx", FLOAT_ONNX):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise UsageError(f"'{path}' holds neither model.int8.onnx nor model.onnx: pass the engine file itself")
    if not path.is_file():
        raise UsageError(f"engine file not found: '{path}'")
    if path.suffix.lower() not in ONNX_SUFFIXES + ENGINE_SUFFIXES + CHECKPOINT_SUFFIXES:
        raise UsageError(
            f"cannot tell which runtime runs '{path}': expected .onnx (ONNX Runtime), .engine/.plan (TensorRT) "
            "or .safetensors (an rkd checkpoint)"
        )
    return path


def _refuse_preprocessing(path: Path, manifest: dict[str, Any] | None, preprocessing: Preprocessing | None) -> None:
    """Refuse an input convention stated for an rkd model (a checkpoint, a bundle's file): it normalises its own
    input."""
    checkpoint = path.suffix.lower() in CHECKPOINT_SUFFIXES
    if preprocessing is not None and (manifest is not None or checkpoint):
        what = "checkpoint" if checkpoint else "bundle's model"
        raise UsageError(f"'{path.name}' is an rkd {what}, which takes [0, 1] RGB NCHW images and normalises them "
                         "itself: drop --mean/--std/--pixel-scale/--layout/--channels")


@dataclass
class _Gradients:
    """The artifact's kind and its gradient surrogate: ``model`` (None where the interpreter cannot differentiate
    the file, ``unsupported`` saying why) and the report's description of it, ``info``."""

    kind: str
    model: nn.Module | None
    info: dict[str, Any]
    unsupported: UnsupportedOperatorError | None = None


def _own_gradients(path: Path, runtime: Runtime, engine_source: Path | None, surrogate: str | Path | None,
                   device: str | torch.device, preprocessing: Preprocessing | None) -> _Gradients:
    """The artifact's kind and gradient surrogate as in the module table, ``surrogate`` overriding the choice."""
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        if surrogate is not None:
            return _Gradients("checkpoint", *load_differentiable(surrogate, device))
        return _Gradients("checkpoint", runtime.model,  # type: ignore[attr-defined]
                          {"file": str(path), "sha256": runtime.sha256, "kind": "checkpoint (exact gradients)"})
    if engine_source is not None:
        kind, source = "tensorrt", engine_source
    else:
        kind = "onnx-int8" if is_integer_graph(path) else "onnx-float"
        source = Path(surrogate) if surrogate is not None else path
    try:
        return _Gradients(kind, *load_differentiable(source, device, preprocessing=preprocessing))
    except UnsupportedOperatorError as exc:
        return _Gradients(kind, None, {}, exc)


def _default_reference(path: Path, grads: _Gradients, runtime: Runtime, manifest: dict[str, Any] | None,
                       surrogate: str | Path | None, device: str | torch.device,
                       warnings: list[str]) -> tuple[nn.Module | None, dict[str, Any]]:
    """The float reference when none is given: the checkpoint itself, a float ONNX file itself, or the bundle's
    ``model.onnx``; else none, with a warning."""
    if grads.kind == "checkpoint":
        return runtime.model, {"file": str(path), "sha256": runtime.sha256,  # type: ignore[attr-defined]
                               "note": "the verified model is the float model"}
    if grads.kind == "onnx-float" and surrogate is None and grads.model is not None:
        return grads.model, {**grads.info, "note": "the verified model is the float model"}
    if manifest is not None and (path.parent / FLOAT_ONNX).is_file() and FLOAT_ONNX in manifest.get("files", {}):
        return load_differentiable(path.parent / FLOAT_ONNX, device)
    warnings.append("no float reference (no bundle model.onnx, no --reference): drops and transfer attacks "
                    "are not measured")
    return None, {}


def _gradients_from_reference(grads: _Gradients, unsupported: UnsupportedOperatorError, ref_model: nn.Module | None,
                              ref_info: dict[str, Any], need_gradients: bool, warnings: list[str]) -> None:
    """A file the interpreter cannot differentiate: BPDA through the float reference when there is one; else no
    surrogate for a gradient-free suite, and ``unsupported`` raised for one that needs gradients."""
    if ref_model is not None:  # BPDA through the float model: the engine's values, the reference's gradients
        grads.model = ref_model
        grads.info = {**{k: v for k, v in ref_info.items() if k != "note"}, "kind": "the float reference (BPDA)",
                      "note": f"{unsupported}"}
        warnings.append(f"the gradients come from the float reference, not the engine's own graph "
                        f"({', '.join(unsupported.ops)} cannot be differentiated): white-box numbers are "
                        "transfer-like and may overstate robustness")
    elif need_gradients:
        raise unsupported
    else:
        grads.info = {"kind": "none", "note": f"{unsupported}"}


def _target(path: Path, runtime: Runtime, grads: _Gradients, ref_model: nn.Module | None, ref_info: dict[str, Any],
            manifest: dict[str, Any] | None, engine_source: Path | None, warnings: list[str]) -> VerifyTarget:
    """The opened target with the report's description and the threat model its model file records."""
    stamp_file = engine_source if engine_source is not None else path if path.suffix.lower() in ONNX_SUFFIXES else None
    stamped = stamped_threat_model(stamp_file) if stamp_file is not None else None
    info = {
        "threat_model_file": stamp_file.name if stamped is not None and stamp_file is not None else None,
        "artifact": {"file": str(path), "kind": grads.kind, **runtime.describe()},
        "surrogate": grads.info,
        "reference": ref_info or None,
        "bundle": str(path.parent) if manifest is not None else None,
    }
    return VerifyTarget(path=path, kind=grads.kind, runtime=runtime, surrogate=grads.model, reference=ref_model,
                        manifest=manifest, info=info, warnings=warnings, stamped_threat_model=stamped)
