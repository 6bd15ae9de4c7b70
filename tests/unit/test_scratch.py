"""What a killed export or quantize leaves beside its bundle is cleaned by the next one (or, when rkd cannot
tell it is stale, reported and kept); a bundle killed halfway through its replacement comes back."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rkd.models import save_checkpoint
from rkd.testing import train_tiny_classifier

META = {"data": {"dataset": "synthetic"}, "threat": {"norm": "linf", "eps": 8 / 255, "alpha": 2 / 255}}


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _killed(code: str) -> None:
    """Run ``code`` in a fresh interpreter that ends itself with SIGKILL where the code says ``die()``."""
    prelude = "import os, signal\ndef die(*_a, **_k):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scratch")
    return save_checkpoint(train_tiny_classifier(steps=10), root / "student.safetensors", metadata=META)


def test_a_killed_export_is_cleaned_by_the_next(checkpoint: Path, tmp_path: Path) -> None:
    from rkd.deploy.export import export_bundle

    out = tmp_path / "bundle"
    _killed(f"""
        from rkd.deploy.bundle import stage_bundle
        with stage_bundle({str(out)!r}, force=False) as stage:
            (stage / "model.onnx").write_bytes(b"half")
            die()
    """)
    assert any(name.endswith(".staging") for name in _hidden(tmp_path))
    export_bundle(checkpoint, out, parity_data=("synthetic", {}))
    assert _hidden(tmp_path) == [] and (out / "manifest.json").is_file()


def test_a_killed_quantize_is_cleaned_by_the_next(checkpoint: Path, tmp_path: Path) -> None:
    from rkd.quantize.pipeline import quantize_checkpoint

    out = tmp_path / "bundle"
    args = f"{str(checkpoint)!r}, {str(out)!r}, calib_data=('synthetic', {{}}), calib_n=64, eval_n=0"
    _killed(f"""
        import rkd.quantize.pipeline as qp
        qp.build_surrogate = die  # killed after the INT8 file is written, before the bundle is
        qp.quantize_checkpoint({args})
    """)
    assert any(name.endswith(".export") for name in _hidden(tmp_path))  # the export made apart, still there
    quantize_checkpoint(checkpoint, out, calib_data=("synthetic", {}), calib_n=64, eval_n=0)
    assert _hidden(tmp_path) == [] and (out / "model.int8.onnx").is_file()


def test_a_bundle_killed_between_the_renames_that_replace_it_comes_back(checkpoint: Path, tmp_path: Path) -> None:
    from rkd.atomic import sweep_scratch
    from rkd.deploy.bundle import read_manifest
    from rkd.deploy.export import export_bundle

    out = tmp_path / "bundle"
    export_bundle(checkpoint, out, parity_data=("synthetic", {}))
    files = read_manifest(out)["files"]
    _killed(f"""
        import os
        from rkd.deploy.export import export_bundle
        rename, calls = os.rename, []
        def second_kills(src, dst):
            calls.append(dst)
            if len(calls) == 2 and str(dst) == {str(out)!r}:
                die()
            rename(src, dst)
        os.rename = second_kills
        export_bundle({str(checkpoint)!r}, {str(out)!r}, parity_data=("synthetic", {{}}), force=True)
    """)
    assert not out.exists()  # the old bundle is aside, the new one not yet in place
    sweep_scratch(tmp_path, "bundle")
    assert read_manifest(out)["files"] == files and _hidden(tmp_path) == []


def test_a_folder_in_use_is_kept_and_one_rkd_cannot_judge_is_reported(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from rkd.atomic import scratch_dir, sweep_scratch

    legacy = [tmp_path / ".rkd-quantize-abc123", tmp_path / ".bundle.xyz789.staging"]
    for folder in legacy:
        folder.mkdir()
        (folder / "model.int8.onnx").write_bytes(b"?")
    with scratch_dir(tmp_path, "bundle", "staging") as busy:
        (busy / "model.onnx").write_bytes(b"in progress")
        with caplog.at_level(logging.WARNING, logger="rkd.atomic"):
            assert sweep_scratch(tmp_path, "bundle") == sorted(legacy)
        assert (busy / "model.onnx").read_bytes() == b"in progress"
    assert "left by an interrupted rkd run" in caplog.text and all(f.is_dir() for f in legacy)
    assert not busy.exists() and sorted(_hidden(tmp_path)) == sorted(f.name for f in legacy)
