"""`rkd verify` and `rkd eval` check their whole input before any model call: a manifest that is not what rkd
wrote, a report folder that cannot be written, a missing pyautoattack, attack names, seeds and step counts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rkd.cli.app import app
from rkd.models import save_checkpoint
from rkd.testing import train_tiny_classifier

runner = CliRunner()
META = {"data": {"dataset": "synthetic"}, "threat": {"norm": "linf", "eps": 8 / 255, "alpha": 2 / 255}}
RUN = ["--data", "synthetic:n=64", "--n", "16", "--attacks", "pgd2", "--gate", "clean_acc>=0", "--allow-no-floor"]


def _run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def _one_line_error(res, code: int) -> str:
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output and "internal error" not in res.output
    return " ".join(res.output.split())


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rkd.deploy.export import export_bundle

    root = tmp_path_factory.mktemp("checks")
    ckpt = save_checkpoint(train_tiny_classifier(steps=10), root / "student.safetensors", metadata=META)
    export_bundle(ckpt, root / "bundle", parity_data=("synthetic", {}))
    return root / "bundle"


def _edited(bundle: Path, tmp_path: Path, edit) -> Path:
    copy = Path(shutil.copytree(bundle, tmp_path / "bundle"))
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.fixture
def no_model_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open an artifact or a checkpoint fails the test: the checks must come first."""
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("a model was opened before the input was checked")

    monkeypatch.setattr("rkd.verify.verification.open_target", refuse)
    monkeypatch.setattr("rkd.verify.evaluate.load_model_for_eval", refuse)


def test_a_threat_model_that_is_no_radius_is_a_one_line_exit_2(bundle: Path, tmp_path: Path) -> None:
    copy = _edited(bundle, tmp_path, lambda m: m["threat_model"].update(eps="eight"))
    res = _run("verify", "--engine", str(copy / "model.onnx"), *RUN, "--report", str(tmp_path / "r"))
    text = _one_line_error(res, 2)
    assert "threat_model.eps is 'eight', not a linf radius; re-export the bundle" in text
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", ["../outside.txt", "{outside}"])
def test_a_manifest_naming_a_file_outside_the_bundle_is_refused_unread(
        bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    import rkd.deploy.bundle

    outside = tmp_path / "outside.txt"
    outside.write_text("not the bundle's")
    name = name.format(outside=outside)
    copy = _edited(bundle, tmp_path, lambda m: m["files"].update({name: {"sha256": "0" * 64, "bytes": 1}}))
    hashed: list[Path] = []
    real = rkd.deploy.bundle.file_sha256
    monkeypatch.setattr(rkd.deploy.bundle, "file_sha256", lambda p: hashed.append(Path(p).resolve()) or real(p))
    res = _run("verify", "--engine", str(copy / "model.onnx"), *RUN, "--report", str(tmp_path / "r"))
    text = _one_line_error(res, 2)
    assert "which is not a file inside the bundle" in text
    assert outside.resolve() not in hashed and real(outside)[:12] not in text


def test_a_missing_pyautoattack_is_exit_3_before_any_attack(
        bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "pyautoattack", None)  # `import pyautoattack` fails
    res = _run("verify", "--engine", str(bundle / "model.onnx"), "--data", "synthetic:n=64", "--n", "16",
               "--attacks", "pgd2,autoattack", "--gate", "clean_acc>=0", "--allow-no-floor",
               "--report", str(tmp_path / "r"))
    text = _one_line_error(res, 3)
    assert "needs pyautoattack" in text and "pgd2:" not in text and not (tmp_path / "r").exists()
    ckpt = bundle.parent / "student.safetensors"
    res = _run("eval", str(ckpt), "--data", "synthetic", "--n", "16", "--attacks", "square",
               "--report", str(tmp_path / "e.json"))
    assert "needs pyautoattack" in _one_line_error(res, 3)


def test_a_report_folder_that_cannot_be_written_is_refused_up_front(bundle: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "r"
    (blocked / "verify.json").mkdir(parents=True)  # where the report goes, a folder
    res = _run("verify", "--engine", str(bundle / "model.onnx"), *RUN, "--report", str(blocked))
    assert "holds a folder named verify.json" in _one_line_error(res, 2) and "pgd2:" not in res.output
    if Path("/proc/self").is_dir():  # a file system nobody writes, root included
        res = _run("verify", "--engine", str(bundle / "model.onnx"), *RUN, "--report", "/proc/rkd-report")
        assert "--report '/proc/rkd-report'" in _one_line_error(res, 2) and "pgd2:" not in res.output


@pytest.mark.parametrize(("args", "message"), [
    (["--attacks", "aa-custom:apgd-ce+apgd-ce"], "names apgd-ce twice"),
    (["--attacks", "pgd99999999999999999999"], "at most 10,000"),
    (["--attacks", "pgd10r1000"], "at most 100"),
    (["--attacks", "cw100000"], "at most 10,000"),
    (["--attacks", "pgd2,autoattack", "--seed", "-1"], "--seed must be an integer in [0, 2**63), got -1"),
])
def test_attack_specs_and_seeds_are_checked_before_any_model_call(
        tmp_path: Path, no_model_call: None, args: list[str], message: str) -> None:
    engine = tmp_path / "model.onnx"
    engine.write_bytes(b"never opened")
    res = _run("verify", "--engine", str(engine), "--data", "synthetic", "--gate", "clean_acc>=0",
               "--allow-no-floor", *args, "--report", str(tmp_path / "r"))
    assert message in _one_line_error(res, 2)
    res = _run("eval", str(tmp_path / "never.safetensors"), "--data", "synthetic", *args,
               "--report", str(tmp_path / "e.json"))
    assert message in _one_line_error(res, 2)


def test_rkd_quantize_refuses_an_absurd_step_count_too() -> None:
    from rkd.errors import UsageError
    from rkd.quantize.pipeline import parse_eval_attacks

    assert parse_eval_attacks("pgd20") == 20
    with pytest.raises(UsageError, match="at most 10,000"):
        parse_eval_attacks("pgd99999999999999999999")
