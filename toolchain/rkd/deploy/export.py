"""Checkpoint -> deployment bundle: ``model.onnx`` (float), its parity with torch on real test images, and
``manifest.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rkd.data import FALLBACK_DATASET, Selection, fit_to_model, load_selection, recorded_data
from rkd.data.arrays import ImageArrays
from rkd.deploy.bundle import stage_bundle, utc_now, write_manifest
from rkd.deploy.onnx_export import INPUT_NAME, OUTPUT_NAME, compare_onnx, export_onnx
from rkd.deploy.onnx_files import stamp_threat_model
from rkd.environment import package_versions
from rkd.errors import DataError, UsageError
from rkd.models import Classifier, load_checkpoint

ONNX_NAME = "model.onnx"
EXPORTER = "torch.onnx legacy"
#: ``parity_data`` default of :func:`export_bundle`: the data set the checkpoint was trained on.
RECORDED = "recorded"


def _load_parity_data(name: str, options: dict[str, Any], data_root: str | None, n: int) -> Selection:
    """The first ``n`` test images of the parity data (fewer when the split is smaller); a large image folder
    decodes only those (:func:`rkd.data.load_selection`)."""
    try:
        chosen = load_selection(name, "test", n=n, root=data_root, options=options, fewer_ok=True)
    except DataError as exc:
        raise DataError(
            f"{exc}; parity needs real test images: give --data-root, or pass --parity-data synthetic for an "
            "offline export (labelled as such in the manifest)"
        ) from None
    data = chosen.data
    if data.image_shape[0] != 3:
        raise DataError(f"parity data '{name}' has {data.image_shape[0]} channels; rkd models take 3 (RGB)")
    if len(data) == 0:
        raise DataError(f"parity data '{name}' has no test images")
    return chosen


def _classes(
    sidecar: dict[str, Any], data: ImageArrays | None, num_classes: int
) -> tuple[list[str] | None, str]:
    """Class names and where they came from: the checkpoint's training data, else the parity data set."""
    meta = sidecar.get("metadata") or {}
    names = (meta.get("data") or {}).get("classes") if isinstance(meta, dict) else None
    if isinstance(names, list) and len(names) == num_classes:
        return [str(c) for c in names], "checkpoint"
    if data is not None and data.num_classes == num_classes:
        return list(data.classes), f"parity data ({data.name})"
    return None, "unknown"


def _threat_model(sidecar: dict[str, Any]) -> dict[str, Any] | None:
    meta = sidecar.get("metadata") or {}
    threat = meta.get("threat") if isinstance(meta, dict) else None
    if isinstance(threat, dict) and "eps" in threat:
        return {"norm": threat.get("norm", "linf"), "eps": threat["eps"]}
    return None


def data_record(sidecar: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest's ``data`` section: the data set the checkpoint was trained on, its options (which include an
    image folder's ``image_size`` and evaluation ``crop_ratio``, so verify decodes the same way) and, when
    recorded, the training and evaluation transforms (from the checkpoint's metadata); None when the checkpoint
    does not say."""
    meta = sidecar.get("metadata") or {}
    data = meta.get("data") if isinstance(meta, dict) else None
    name = data.get("dataset") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name:
        return None
    options = data.get("options")
    record: dict[str, Any] = {"dataset": name, "options": dict(options) if isinstance(options, dict) else {}}
    transforms = data.get("transforms")
    if isinstance(transforms, dict):
        record["transforms"] = dict(transforms)
    return record


def bundle_manifest(
    model: Classifier,
    *,
    image_size: tuple[int, int],
    classes: list[str] | None,
    classes_source: str,
    threat_model: dict[str, Any] | None,
    checkpoint: Path,
    checkpoint_sha256: str | None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The core manifest fields of a bundle of ``model`` (``files`` are filled by ``write_manifest``)."""
    h, w = image_size
    manifest: dict[str, Any] = {
        "model": model.spec.to_dict(),
        "input": {
            "name": INPUT_NAME, "shape": [None, 3, h, w], "dtype": "float32", "range": [0.0, 1.0],
            "layout": "NCHW", "normalisation": "inside the model",
        },
        "output": {"name": OUTPUT_NAME, "shape": [None, model.num_classes], "dtype": "float32",
                   "num_classes": model.num_classes},
        "classes": classes,
        "classes_source": classes_source,
    }
    if threat_model is not None:
        manifest["threat_model"] = threat_model
    if data is not None:
        manifest["data"] = data
    manifest |= {
        "source": {"checkpoint": str(checkpoint.resolve()), "sha256": checkpoint_sha256},
        "versions": package_versions(),
        "created": utc_now(),
    }
    return manifest


def export_bundle(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    force: bool = False,
    parity_data: tuple[str, dict[str, Any]] | str | None = RECORDED,
    data_root: str | None = None,
    parity_n: int = 256,
    opset: int = 17,
) -> dict[str, Any]:
    """Export an rkd checkpoint as a bundle: ``model.onnx`` + ``manifest.json`` in ``out_dir``.

    The checkpoint is loaded first (``rkd.models.load_checkpoint``, sha256-checked); the bundle is built in a
    staging directory and renamed into place (:func:`rkd.deploy.bundle.stage_bundle`), so any failure leaves
    no bundle and an existing one untouched. Parity: torch vs ONNX Runtime (CPU) logits on the first
    ``parity_n`` test images of ``parity_data`` (:func:`rkd.deploy.onnx_export.compare_onnx`).

    Args:
        checkpoint: the ``.safetensors`` checkpoint (with its sidecar).
        out_dir: the bundle directory to create.
        force: replace an existing ``out_dir`` (only once the new bundle is complete).
        parity_data: ``(dataset, options)`` as from ``rkd.data.parse_data_arg`` (``("synthetic", {})``
            offline, marked ``synthetic`` in the manifest); :data:`RECORDED` (the default): the data set the
            checkpoint was trained on, else CIFAR-10; None skips the parity check.
        data_root: folder of data sets that download (cifar10/cifar100).
        parity_n: number of test images for parity (fewer if the split is smaller).
        opset: ONNX opset (17 up to the legacy exporter's maximum).

    Returns:
        The manifest written.

    Raises:
        CheckpointError: unreadable checkpoint. DataError: parity data that cannot be loaded. UsageError: an
            existing ``out_dir`` without ``force``, bad arguments, or an ONNX file the checker rejects.
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if isinstance(parity_n, bool) or not isinstance(parity_n, int) or parity_n < 1:
        raise UsageError(f"--parity-n must be a positive integer, got {parity_n!r}")
    model, sidecar = load_checkpoint(checkpoint, map_location="cpu")
    trained_on = data_record(sidecar)
    if isinstance(parity_data, str):
        if parity_data != RECORDED:
            raise UsageError(f"parity_data must be (dataset, options), '{RECORDED}' or None, got {parity_data!r}")
        parity_data = recorded_data(trained_on, split="test") or (FALLBACK_DATASET, {})
    elif parity_data is not None:  # given: an image folder is decoded at the model's size and crop
        parity_data = (parity_data[0], fit_to_model(parity_data[0], parity_data[1], trained_on))
    with stage_bundle(out_dir, force=force) as stage:  # refuses an existing out_dir before any slow work
        data = parity = None
        if parity_data is not None:
            parity = _load_parity_data(parity_data[0], dict(parity_data[1]), data_root, parity_n)
            data = parity.data
        recorded_size = ((trained_on or {}).get("options") or {}).get("image_size")
        if data is not None:
            image_size = data.image_shape[1:]
        elif isinstance(recorded_size, int) and not isinstance(recorded_size, bool) and recorded_size > 0:
            image_size = (recorded_size, recorded_size)
        else:
            image_size = (32, 32)
        classes, classes_source = _classes(sidecar, data, model.num_classes)
        manifest = bundle_manifest(
            model, image_size=image_size, classes=classes, classes_source=classes_source,
            threat_model=_threat_model(sidecar), checkpoint=checkpoint,
            checkpoint_sha256=sidecar.get("sha256"), data=trained_on,
        )
        export_onnx(model, stage / ONNX_NAME, opset=opset, image_size=image_size)
        if manifest.get("threat_model"):  # in the file too, where its sha256 covers it
            stamp_threat_model(stage / ONNX_NAME, manifest["threat_model"])
        section: dict[str, Any] = {"file": ONNX_NAME, "opset": opset, "exporter": EXPORTER,
                                   "torch": torch.__version__, "parity": None, "parity_data": None}
        if data is not None and parity is not None and parity_data is not None:
            name, options = parity_data
            idx = parity.idx
            section["parity"] = compare_onnx(model, stage / ONNX_NAME, data.to_float())
            section["parity_data"] = {"dataset": name, "options": dict(options), "split": "test",
                                      "selection": "first", "n": len(idx), "synthetic": name == "synthetic"}
            if name == "synthetic":
                section["parity_data"]["note"] = "synthetic images, not real data: a smoke check only"
        manifest["export"] = section
        manifest = write_manifest(stage, manifest)
    return manifest
