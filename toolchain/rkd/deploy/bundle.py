"""The deployment bundle: a directory of model files plus ``manifest.json``, written all-or-nothing.

Layout (``export/README.md`` documents it for users)::

    bundle/
      model.onnx          float ONNX (rkd export)
      model.int8.onnx     QDQ INT8 (rkd quantize), surrogates, model.<gpu>.engine (TensorRT), ...
      manifest.json       {"format": "rkd-bundle", "format_version": 1, "model", "input", "output", "classes",
                           "threat_model", "data", "source", "files": {name: {"sha256", "bytes"}}, "versions",
                           "created", and one top-level section per stage: "export", "quantize", "engines"}

A bundle is never half-written: it is built in a hidden staging directory beside its destination and renamed
into place (:func:`stage_bundle`); :func:`update_bundle` copies, adds and swaps the same way. Only the
standard library is used here (no torch, no onnx).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from rkd.atomic import atomic_write_text, file_sha256, fsync_dir, scratch_dir, sweep_scratch
from rkd.errors import CheckpointError, UsageError
from rkd.records import check_format_version, read_record

MANIFEST_NAME = "manifest.json"
FORMAT = "rkd-bundle"
FORMAT_VERSION = 1

#: Manifest keys owned by the bundle itself; :func:`update_bundle` sections may not replace them.
CORE_KEYS: tuple[str, ...] = (
    "format", "format_version", "model", "input", "output", "classes", "threat_model", "data", "source", "files",
    "versions", "created", "updated",
)


def manifest_data(manifest: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The data set a bundle's model was trained on: the manifest's ``data`` section (``{"dataset", "options"}``),
    else, in a bundle written before it was recorded, the data its INT8 model was calibrated on; None when neither
    says."""
    if not isinstance(manifest, Mapping):
        return None
    data = manifest.get("data")
    if isinstance(data, Mapping) and data.get("dataset"):
        return dict(data)
    quantize = manifest.get("quantize")
    calib = quantize.get("calibration") if isinstance(quantize, Mapping) else None
    if isinstance(calib, Mapping) and calib.get("dataset"):
        return {"dataset": calib["dataset"], "options": dict(calib.get("options") or {})}
    return None


def utc_now() -> str:
    """The current UTC time as ISO 8601 with seconds (``2026-11-30T12:00:00+00:00``)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _refuse_existing(out_dir: Path) -> None:
    raise UsageError(f"bundle directory '{out_dir}' exists: pass --force to replace it")


def check_replaceable(out_dir: Path) -> None:
    """Refuse to replace ``out_dir`` unless it is empty or an rkd bundle holding only its own files: ``--force``
    replaces a bundle, never a folder of other files (a run directory, a checkpoint's folder).

    Raises:
        UsageError: ``out_dir`` holds files that are not an rkd bundle's.
    """
    if not out_dir.is_dir():
        return
    manifest = out_dir / MANIFEST_NAME
    listed: set[str] = set()
    if manifest.is_file():
        try:
            record = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if isinstance(record, dict) and record.get("format") == FORMAT:
            listed = {MANIFEST_NAME, *(record.get("files") or {})}
    others = [p.relative_to(out_dir).as_posix() for p in sorted(out_dir.rglob("*"))
              if (p.is_file() or p.is_symlink()) and p.relative_to(out_dir).as_posix() not in listed]
    if others:
        what = "is not an rkd bundle" if not listed else "holds files that are not its bundle's"
        raise UsageError(f"'{out_dir}' {what} (e.g. '{others[0]}', {len(others)} file(s)); --force replaces only "
                         "a bundle: choose another --out")


@contextlib.contextmanager
def stage_bundle(out_dir: str | Path, *, force: bool) -> Iterator[Path]:
    """Build a bundle in a temp directory beside ``out_dir``; on success rename it into place.

    The existing ``out_dir`` is refused unless ``force``; with ``force`` it is replaced only after the new
    bundle is complete (two renames, the old directory restored if the second fails). On an exception
    inside the block the staging directory is removed and ``out_dir`` is left as it was.

    Yields:
        The staging directory to write the bundle's files into.

    Raises:
        UsageError: ``out_dir`` exists without ``force``, or is not a directory.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() or out_dir.is_symlink():
        if not out_dir.is_dir():
            raise UsageError(f"'{out_dir}' exists and is not a directory; choose another --out")
        if not force:
            _refuse_existing(out_dir)
        check_replaceable(out_dir)
    sweep_scratch(out_dir.parent, out_dir.name)  # what a killed export or quantize left beside it
    with scratch_dir(out_dir.parent, out_dir.name, "staging") as staging:
        yield staging
        _commit(staging, out_dir, force=force)


def _commit(staging: Path, out_dir: Path, *, force: bool) -> None:
    """Move ``staging`` to ``out_dir``, replacing an existing ``out_dir`` only when ``force``."""
    if not (out_dir.exists() or out_dir.is_symlink()):
        os.rename(staging, out_dir)  # fails (never merges) if a non-empty out_dir appeared meanwhile
        fsync_dir(out_dir.parent)
        return
    if not force:
        _refuse_existing(out_dir)
    check_replaceable(out_dir)
    with scratch_dir(out_dir.parent, out_dir.name, "old", create=False) as old:  # removed on exit
        os.rename(out_dir, old)  # killed before the next rename: the next sweep_scratch renames it back
        try:
            os.rename(staging, out_dir)
        except BaseException:
            os.rename(old, out_dir)
            raise
        fsync_dir(out_dir.parent)


def install_bundle(staged: str | Path, out_dir: str | Path, *, force: bool) -> None:
    """Move a complete bundle built elsewhere on the same file system (``staged``) to ``out_dir``; an existing
    ``out_dir`` is replaced only with ``force`` and only when it is a bundle (:func:`check_replaceable`)."""
    _commit(Path(staged), Path(out_dir), force=force)


def _bundle_files(bundle_dir: Path) -> list[str]:
    """Relative POSIX names of every regular file under ``bundle_dir`` except the manifest, sorted."""
    names = []
    for path in bundle_dir.rglob("*"):
        if path.is_file():
            name = path.relative_to(bundle_dir).as_posix()
            if name != MANIFEST_NAME:
                names.append(name)
    return sorted(names)


def write_manifest(bundle_dir: str | Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``bundle_dir/manifest.json`` (atomically) with ``files`` filled from the directory's contents.

    ``format`` and ``format_version`` are set; ``files`` maps every file except the manifest to its sha256
    and size. Returns the manifest written.
    """
    bundle_dir = Path(bundle_dir)
    record: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION}
    record.update({k: v for k, v in manifest.items() if k not in ("format", "format_version", "files")})
    record["files"] = {
        name: {"sha256": file_sha256(bundle_dir / name), "bytes": (bundle_dir / name).stat().st_size}
        for name in _bundle_files(bundle_dir)
    }
    try:
        text = json.dumps(record, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise UsageError(f"bundle manifest is not JSON-serialisable: {exc}") from None
    atomic_write_text(bundle_dir / MANIFEST_NAME, text)
    return record


def read_manifest(bundle_dir: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """Read ``bundle_dir/manifest.json``; with ``verify`` check every listed file's sha256.

    Raises:
        CheckpointError: no bundle or manifest, a corrupt or foreign manifest, a listed file missing, or a
            sha256 mismatch (naming the file).
    """
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST_NAME
    if not bundle_dir.is_dir():
        raise CheckpointError(f"bundle directory not found: '{bundle_dir}' (create one with `rkd export`)")
    if not path.is_file():
        raise CheckpointError(
            f"'{bundle_dir}' has no {MANIFEST_NAME}: not an rkd bundle (create one with `rkd export`)"
        )
    record = read_record(path, fix="re-export the bundle")
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not an rkd bundle manifest (expected \"format\": \"{FORMAT}\")")
    check_format_version(record, path, reads=FORMAT_VERSION, fix="re-export the bundle")
    files = record.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"'{path}' lacks a \"files\" table; re-export the bundle")
    for name in files:  # before anything is read: a manifest never makes rkd open a file outside its bundle
        if not inside_bundle(bundle_dir, name):
            raise CheckpointError(f"'{path}' lists {name!r}, which is not a file inside the bundle: a manifest "
                                  "names only the bundle's own files; re-export the bundle")
    if verify:
        for name, entry in files.items():
            file = bundle_dir / name
            if not file.is_file():
                raise CheckpointError(
                    f"bundle '{bundle_dir}': '{name}' is listed in {MANIFEST_NAME} but missing"
                )
            expected = entry.get("sha256") if isinstance(entry, dict) else None
            actual = file_sha256(file)
            if actual != expected:
                raise CheckpointError(
                    f"bundle '{bundle_dir}': sha256 mismatch for '{name}' (manifest {str(expected)[:12]}..., "
                    f"file {actual[:12]}...): the file changed since it was written; re-export the bundle"
                )
    return record


def inside_bundle(bundle_dir: str | Path, name: object) -> bool:
    """Whether ``name`` is a relative POSIX path that stays inside ``bundle_dir`` (no ``..``, no absolute path, no
    link leading out of it), as every name a manifest lists must be."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return False
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts:
        return False
    root = Path(bundle_dir).resolve()
    return (root / pure).resolve().is_relative_to(root)


def _check_name(name: str) -> str:
    pure = PurePosixPath(name)
    bad = not name or pure.is_absolute() or ".." in pure.parts or "\\" in name
    if bad or pure.as_posix() == MANIFEST_NAME:
        raise UsageError(
            f"cannot add '{name}' to a bundle: use a relative file name other than {MANIFEST_NAME}"
        )
    return pure.as_posix()


def update_bundle(
    bundle_dir: str | Path, add: Mapping[str, str | Path], sections: Mapping[str, Any],
    remove: Iterable[str] = (),
) -> dict[str, Any]:
    """Add, replace or remove files and set top-level manifest sections of an existing bundle, all or nothing.

    The bundle is verified (:func:`read_manifest`), copied to a staging directory without the files named in
    ``remove`` (absent ones are ignored: a file an earlier run wrote and this one does not), the files ``add``
    (bundle name -> source path) are copied in, ``sections`` (e.g. ``{"quantize": {...}}``) are set, the manifest
    is rewritten with fresh sha256s and an ``updated`` time, and the copy is swapped into place.

    Returns:
        The new manifest.

    Raises:
        CheckpointError: the bundle is missing or fails verification. UsageError: a bad file name, a missing
            source file, or a section that would replace one of :data:`CORE_KEYS`.
    """
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir, verify=True)
    targets = {_check_name(name): Path(src) for name, src in add.items()}
    dropped = {_check_name(name) for name in remove} - set(targets)
    for name, src in targets.items():
        if not src.is_file():
            raise UsageError(f"cannot add '{name}' to bundle '{bundle_dir}': source file '{src}' not found")
    for key in sections:
        if key in CORE_KEYS:
            raise UsageError(f"bundle section '{key}' is reserved; choose another name for the section")
    with stage_bundle(bundle_dir, force=True) as stage:
        for name in manifest["files"]:
            if name in dropped:
                continue
            dst = stage / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(bundle_dir / name, dst)
        for name, src in targets.items():
            dst = stage / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        manifest.update(sections)
        manifest["updated"] = utc_now()
        manifest = write_manifest(stage, manifest)
    return manifest
