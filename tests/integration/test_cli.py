"""The CLI end to end on synthetic data: help texts, `rkd teacher` and `rkd eval`, errors and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rkd.cli.app import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_help_lists_commands_and_exit_codes() -> None:
    res = _run("--help")
    assert res.exit_code == 0
    for word in ("teacher", "eval", "Exit codes"):
        assert word in res.output
    for cmd in ("teacher", "eval"):
        assert _run(cmd, "--help").exit_code == 0


@pytest.fixture(scope="module")
def smoke_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smoke") / "teacher"
    res = _run("teacher", str(REPO / "recipes" / "smoke.yaml"), "--out", str(out))
    assert res.exit_code == 0, res.output
    return out


def test_teacher_writes_a_loadable_checkpoint_and_resolved_recipe(smoke_teacher: Path) -> None:
    from rkd.models import load_checkpoint

    model, sidecar = load_checkpoint(smoke_teacher / "model.safetensors")
    assert sidecar["metadata"]["stage"] == "teacher" and sidecar["metadata"]["method"]["name"] == "pgd_at"
    assert (smoke_teacher / "recipe.resolved.yaml").exists() and (smoke_teacher / "metrics.jsonl").exists()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_teacher_refuses_to_overwrite_and_resume_finishes(smoke_teacher: Path) -> None:
    res = _run("teacher", str(REPO / "recipes" / "smoke.yaml"), "--out", str(smoke_teacher))
    assert res.exit_code == 2 and "--resume" in res.output
    res = _run("teacher", str(REPO / "recipes" / "smoke.yaml"), "--out", str(smoke_teacher), "--resume")
    assert res.exit_code == 0, res.output


def test_a_folder_holding_a_model_without_a_run_is_never_overwritten(smoke_teacher: Path, tmp_path: Path) -> None:
    import shutil

    kept = tmp_path / "downloaded"
    kept.mkdir()
    for name in ("model.safetensors", "model.json"):
        shutil.copy2(smoke_teacher / name, kept / name)
    before = (kept / "model.safetensors").read_bytes()
    for extra in ([], ["--resume"]):
        res = _run("teacher", str(REPO / "recipes" / "smoke.yaml"), "--out", str(kept), *extra)
        assert res.exit_code == 2 and "already holds a checkpoint" in res.output, res.output
    assert (kept / "model.safetensors").read_bytes() == before


def test_eval_reports_every_attack_with_intervals(smoke_teacher: Path, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    res = _run("eval", str(smoke_teacher / "model.safetensors"), "--data", "synthetic", "--n", "48",
               "--attacks", "clean,fgsm,pgd5,cw5", "--device", "cpu", "--report", str(report), "--by-class")
    assert res.exit_code == 0, res.output
    rep = json.loads(report.read_text())
    assert set(rep["attacks"]) == {"clean", "fgsm", "pgd5", "cw5"}
    assert rep["n"] == 48 and rep["data"]["n"] == 48 and len(rep["data"]["indices_sha256"]) == 64
    for r in rep["attacks"].values():
        assert r["ci95"][0] <= r["acc"] <= r["ci95"][1]
    assert rep["worst_case"]["acc"] <= min(r["acc"] for r in rep["attacks"].values())
    assert rep["clean_acc"] == rep["attacks"]["clean"]["acc"] and rep["eps"] == pytest.approx(8 / 255)
    assert rep["versions"]["torch"] and rep["device"]["device"] == "cpu"
    # per-sample worst case is the AND of the per-attack columns
    cols = list(rep["per_sample"].values())
    worst = [all(c[i] for c in cols) for i in range(48)]
    assert sum(worst) == rep["worst_case"]["correct"]
    # per class: named after the data set's classes, weighted back to the overall accuracy, printed on request
    bc = rep["by_class"]
    assert len(bc["classes"]) == len(bc["support"]) == len(bc["predicted"]) and sum(bc["support"]) == 48
    for name in ("clean", "pgd5", "worst_case"):
        total = sum(a * s for a, s in zip(bc["acc"][name], bc["support"], strict=True) if a is not None)
        overall = rep["worst_case"]["acc"] if name == "worst_case" else rep["attacks"][name]["acc"]
        assert total / 48 == pytest.approx(overall)
    assert "accuracy per class" in res.output and bc["classes"][0] in res.output


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["eval", "missing.safetensors", "--data", "synthetic"], 2, "not found"),
        (["eval", "{ckpt}", "--data", "synthetic", "--eps", "0"], 2, "(0, 1]"),
        (["eval", "{ckpt}", "--data", "synthetic", "--attacks", "pgd"], 2, "unknown attack"),
        (["eval", "{ckpt}", "--data", "synthtic"], 2, "did you mean 'synthetic'"),
        (["eval", "{ckpt}", "--data", "synthetic", "--device", "cuda"], 3, "no CUDA GPU"),
        (["teacher", "{tmp}/nope.yaml"], 2, "not found"),
        (["teacher", "{recipe}", "--set", "teacher.train.epoch=1", "--out", "{tmp}/x"], 2, "did you mean 'epochs'"),
        (["teacher", "{recipe}", "--set", "teacher.model.name=resnet81", "--out", "{tmp}/y"], 2,
         "did you mean 'resnet18'"),
    ],
)
def test_errors_are_one_line_with_the_documented_exit_code(
    args: list[str], code: int, words: str, smoke_teacher: Path, tmp_path: Path
) -> None:
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    fill = {"ckpt": str(smoke_teacher / "model.safetensors"), "tmp": str(tmp_path),
            "recipe": str(REPO / "recipes" / "smoke.yaml")}
    res = _run(*[a.format(**fill) for a in args])
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    assert words in res.output
    assert res.output.strip().startswith("error:")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_eval_loads_a_foreign_state_dict_without_unpickling(smoke_teacher: Path, tmp_path: Path) -> None:
    """A plain state_dict (as the ARD/RSLAD/TRADES code saves it, under DataParallel's 'module.') evaluates
    like the rkd checkpoint it came from, once the normalisation is given."""
    from rkd.models import load_checkpoint

    model, _ = load_checkpoint(smoke_teacher / "model.safetensors")
    sd = {f"module.{k}": v for k, v in model.net.state_dict().items()}
    torch.save(sd, tmp_path / "foreign.pt")
    mean = ",".join(str(v) for v in model.normalize.mean.flatten().tolist())
    std = ",".join(str(v) for v in model.normalize.std.flatten().tolist())
    reports = []
    for args in (
        [str(smoke_teacher / "model.safetensors")],
        [str(tmp_path / "foreign.pt"), "--model", "resnet18", "--width", "0.125", "--num-classes", "10",
         "--mean", mean, "--std", std],
    ):
        report = tmp_path / f"r{len(reports)}.json"
        res = _run("eval", *args, "--data", "synthetic", "--n", "32", "--attacks", "pgd3", "--device", "cpu",
                   "--report", str(report))
        assert res.exit_code == 0, res.output
        reports.append(json.loads(report.read_text()))
    assert reports[0]["per_sample"] == reports[1]["per_sample"]
    res = _run("eval", str(tmp_path / "foreign.pt"), "--model", "resnet18", "--num-classes", "10",
               "--data", "synthetic", "--n", "8", "--device", "cpu")
    assert res.exit_code == 2 and "shape" in res.output  # width 1 does not match the width-1/8 weights


def test_env_reports_versions_and_runtimes() -> None:
    res = _run("env", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert torch.__version__.startswith(info["versions"]["torch"].split("+")[0])
    assert info["runtimes"]["onnxruntime"]["available"] is True
    trt = info["runtimes"]["tensorrt"]
    assert trt["available"] or "tensorrt" in trt["why"]
    assert isinstance(info["host"]["cpu_extensions"], list) and info["host"]["cpu_capability"]
    res = _run("env")
    assert res.exit_code == 0 and "torch kernels" in res.output


def test_debug_shows_the_traceback_and_keeps_the_exit_code(tmp_path: Path) -> None:
    """Exit 1 means a failed gate to CI: --debug must not turn a usage error into it."""
    res = _run("--debug", "eval", str(tmp_path / "nope.safetensors"), "--data", "synthetic")
    assert res.exit_code == 2
    assert "Traceback" in res.output and "checkpoint not found" in res.output


def test_outputs_that_cannot_be_written_are_exit_2_before_any_work(tmp_path: Path) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    a_folder = tmp_path / "adir"
    a_folder.mkdir()
    ckpt = str(tmp_path / "missing.safetensors")  # the output check comes first: no model is needed
    for extra, message in ((["--report", str(a_folder)], "is a folder; give a file path"),
                           (["--report", str(a_file / "r.json")], "is a file, so the path cannot be created"),
                           (["--aa-state", str(a_folder)], "is a folder; give a file path")):
        res = _run("eval", ckpt, "--data", "synthetic", "--n", "8", *extra)
        assert res.exit_code == 2 and message in " ".join(res.output.split()), (extra, res.output)
    res = _run("eval", ckpt, "--data", "synthetic", "--batch-size", "0")
    assert res.exit_code == 2


def test_run_folders_that_cannot_be_created_are_exit_2(tmp_path: Path) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    for cmd in ("teacher", "distill", "run"):
        res = _run(cmd, str(REPO / "recipes" / "smoke.yaml"), "--out", str(a_file))
        assert res.exit_code == 2 and "is a file; give a folder" in res.output, (cmd, res.output)
    assert a_file.read_text() == "x"


def test_a_recipe_that_is_not_utf8_is_a_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "binary.yaml"
    bad.write_bytes(b"\xff\xfe\x00bad")
    res = _run("teacher", str(bad))
    assert res.exit_code == 2 and "not UTF-8 text" in res.output


def test_named_profiles_resolve_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rkd.config import load_profile

    monkeypatch.chdir(tmp_path)
    assert load_profile("x86-cpu-int8").verify.gates


def test_eval_refuses_foreign_model_flags_for_an_rkd_checkpoint(smoke_teacher: Path) -> None:
    res = _run("eval", str(smoke_teacher / "model.safetensors"), "--data", "synthetic", "--n", "8",
               "--std", "9,9,9", "--num-classes", "100")
    assert res.exit_code == 2 and "--num-classes, --std describe a foreign state_dict" in res.output


def test_eval_on_an_exported_model_points_to_verify(tmp_path: Path) -> None:
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"x")
    res = _run("eval", str(onnx_file), "--data", "synthetic")
    assert res.exit_code == 2 and "rkd verify --engine" in " ".join(res.output.split())


def test_a_train_subset_larger_than_the_data_is_refused(tmp_path: Path) -> None:
    res = _run("teacher", str(REPO / "recipes" / "smoke.yaml"), "--out", str(tmp_path / "t"),
               "--set", "data.train_subset=100000")
    assert res.exit_code == 2 and "data.train_subset is 100000 but" in " ".join(res.output.split())


def test_an_l2_radius_above_one_is_accepted_and_a_linf_one_is_not(smoke_teacher: Path, tmp_path: Path) -> None:
    base = ["eval", str(smoke_teacher / "model.safetensors"), "--data", "synthetic", "--n", "8", "--attacks", "pgd2",
            "--report", str(tmp_path / "r.json")]
    res = _run(*base, "--norm", "l2", "--eps", "1.5", "--alpha", "0.5")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r.json").read_text())["eps"] == 1.5
    res = _run(*base, "--eps", "1.5")
    assert res.exit_code == 2 and "(0, 1]" in res.output
