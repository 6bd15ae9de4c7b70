"""The deployment bundle: all-or-nothing staging, --force replacement, manifest sha256 checks, updates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rkd.deploy.bundle import (
    MANIFEST_NAME,
    file_sha256,
    read_manifest,
    stage_bundle,
    update_bundle,
    write_manifest,
)
from rkd.errors import CheckpointError, UsageError


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _make(out: Path, *, force: bool = False, text: str = "weights") -> dict:
    with stage_bundle(out, force=force) as stage:
        (stage / "model.onnx").write_text(text)
        return write_manifest(stage, {"model": {"name": "tiny_cnn"}, "export": {"opset": 17}})


def test_stage_commits_and_manifest_lists_every_file(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    manifest = _make(out)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]
    assert manifest["format"] == "rkd-bundle" and manifest["format_version"] == 1
    assert manifest["files"] == {"model.onnx": {"sha256": file_sha256(out / "model.onnx"), "bytes": 7}}
    assert read_manifest(out) == manifest
    assert _leftovers(tmp_path) == []


def test_exception_inside_leaves_no_bundle_and_no_temp_dir(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    with pytest.raises(RuntimeError, match="boom"):
        with stage_bundle(out, force=False) as stage:
            (stage / "model.onnx").write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_dir_refused_without_force_and_replaced_with_it(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    _make(out, text="old")
    with pytest.raises(UsageError, match="exists: pass --force to replace it"):
        _make(out, text="new")
    assert (out / "model.onnx").read_text() == "old"
    # a failure during a forced rebuild keeps the old bundle
    with pytest.raises(RuntimeError):
        with stage_bundle(out, force=True) as stage:
            (stage / "model.onnx").write_text("broken")
            raise RuntimeError("export failed")
    assert (out / "model.onnx").read_text() == "old" and read_manifest(out)
    _make(out, force=True, text="new")
    assert (out / "model.onnx").read_text() == "new"
    read_manifest(out)
    assert _leftovers(tmp_path) == []


def test_a_file_in_place_of_the_bundle_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    target.write_text("not a dir")
    with pytest.raises(UsageError, match="not a directory"):
        _make(target, force=True)


def test_modified_file_is_detected_by_name(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    _make(out)
    (out / "model.onnx").write_text("tampered")
    with pytest.raises(CheckpointError, match="sha256 mismatch for 'model.onnx'"):
        read_manifest(out)
    assert read_manifest(out, verify=False)["model"] == {"name": "tiny_cnn"}
    (out / "model.onnx").unlink()
    with pytest.raises(CheckpointError, match="'model.onnx' is listed .* but missing"):
        read_manifest(out)


@pytest.mark.parametrize("content", [None, "{not json", json.dumps({"format": "other"}),
                                     json.dumps({"format": "rkd-bundle", "format_version": 9, "files": {}})])
def test_missing_or_bad_manifest_is_a_one_line_checkpoint_error(tmp_path: Path, content: str | None) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    if content is not None:
        (out / MANIFEST_NAME).write_text(content)
    with pytest.raises(CheckpointError) as info:
        read_manifest(out)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="not found"):
        read_manifest(tmp_path / "nowhere")


def test_update_bundle_adds_files_and_sections(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    first = _make(out)
    src = tmp_path / "q.onnx"
    src.write_text("int8")
    manifest = update_bundle(out, {"model.int8.onnx": src, "surrogates/fq.safetensors": src},
                             {"quantize": {"scheme": "trt"}})
    assert set(manifest["files"]) == {"model.onnx", "model.int8.onnx", "surrogates/fq.safetensors"}
    assert manifest["quantize"] == {"scheme": "trt"} and manifest["export"] == {"opset": 17}
    assert manifest["files"]["model.onnx"] == first["files"]["model.onnx"] and "updated" in manifest
    assert read_manifest(out) == manifest
    assert (out / "model.int8.onnx").read_text() == "int8"
    assert _leftovers(tmp_path) == []


def test_update_bundle_removes_files_an_earlier_run_left(tmp_path: Path) -> None:
    """A PTQ-only re-quantize must not keep the PTQ model of an earlier QAT run in the bundle."""
    out = tmp_path / "bundle"
    _make(out)
    src = tmp_path / "q.onnx"
    src.write_text("qat")
    update_bundle(out, {"model.int8.onnx": src, "model.int8.ptq.onnx": src}, {"quantize": {"qat": True}})
    src.write_text("ptq")
    manifest = update_bundle(out, {"model.int8.onnx": src}, {"quantize": {"qat": None}},
                             remove=["model.int8.ptq.onnx", "never-written.onnx"])
    assert set(manifest["files"]) == {"model.onnx", "model.int8.onnx"}
    assert not (out / "model.int8.ptq.onnx").exists() and (out / "model.int8.onnx").read_text() == "ptq"
    assert read_manifest(out) == manifest
    # a file both added and removed is added
    manifest = update_bundle(out, {"model.int8.ptq.onnx": src}, {}, remove=["model.int8.ptq.onnx"])
    assert "model.int8.ptq.onnx" in manifest["files"]
    assert _leftovers(tmp_path) == []


def test_update_bundle_is_all_or_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    before = _make(out)
    with pytest.raises(UsageError, match="not found"):
        update_bundle(out, {"model.int8.onnx": tmp_path / "missing.onnx"}, {})
    for bad in ("../escape.onnx", MANIFEST_NAME, "/abs.onnx"):
        with pytest.raises(UsageError, match="cannot add"):
            update_bundle(out, {bad: out / "model.onnx"}, {})
    with pytest.raises(UsageError, match="reserved"):
        update_bundle(out, {}, {"files": {}})
    assert read_manifest(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]
    (out / "model.onnx").write_text("tampered")
    with pytest.raises(CheckpointError, match="model.onnx"):
        update_bundle(out, {}, {"quantize": {}})
    assert _leftovers(tmp_path) == []


def test_bundles_and_atomic_files_get_umask_permissions_not_temp_file_ones(tmp_path: Path) -> None:
    """mkdtemp/mkstemp create 0700/0600; a deployed bundle must be readable like any written file."""
    import os
    import stat

    from rkd.atomic import atomic_write_text, default_mode
    from rkd.deploy.bundle import stage_bundle

    old = os.umask(0o022)
    try:
        with stage_bundle(tmp_path / "b", force=False) as staging:
            (staging / "x.txt").write_text("x")
        f = atomic_write_text(tmp_path / "f.json", "{}")
        assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o755 == default_mode(directory=True)
        assert stat.S_IMODE(f.stat().st_mode) == 0o644 == default_mode()
    finally:
        os.umask(old)
