"""Run folders never lose a file: `rkd run` uses only folders it made and keeps the last complete output of a
stage until a new one is complete; `rkd teacher`/`rkd distill` check their folder before writing anything."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rkd.cli.app import app

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "recipes" / "smoke.yaml")
runner = CliRunner()


def _rkd(*args: str):
    """``rkd ARGS`` from the repository root (where the named profiles are)."""
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        return runner.invoke(app, list(args), catch_exceptions=False)
    finally:
        os.chdir(cwd)


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the sha256 of its bytes."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("folders") / "smoke"
    res = _rkd("run", SMOKE, "--out", str(out))
    assert res.exit_code == 0, res.output
    return out


def _copy(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "copy"))


def test_a_folder_rkd_run_did_not_make_is_refused_untouched(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    (out / "teacher").mkdir(parents=True)
    (out / "verify").mkdir()
    (out / "teacher" / "notes.txt").write_text("my notes")
    (out / "verify" / "results.csv").write_text("a,b\n1,2\n")
    before = _tree(out)
    res = _rkd("run", SMOKE, "--out", str(out))
    assert res.exit_code == 2, res.output
    assert "was not made by rkd run and is not empty" in " ".join(res.output.split())
    assert _tree(out) == before and sorted(p.name for p in out.iterdir()) == ["teacher", "verify"]


def test_an_empty_folder_is_adopted_and_marked(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    res = _rkd("run", SMOKE, "--out", str(out), "--set", "teacher.train.epochs=1", "--set", "student.train.epochs=1")
    assert res.exit_code == 0, res.output
    assert (out / ".rkd-run").is_file() and (out / "run.json").is_file()
    res = _rkd("run", SMOKE, "--out", str(out), "--set", "teacher.train.epochs=1", "--set", "student.train.epochs=1")
    assert res.exit_code == 0 and res.output.count("up to date, skipped") == 5, res.output


@pytest.mark.parametrize("where", ["teacher/notes.txt", "student/sub/notes.txt", "verify/results.csv",
                                   "bundle/notes.txt", "teacher.previous/notes.txt"])
def test_a_stage_folder_holding_files_rkd_did_not_write_is_refused_before_anything_runs(
        finished: Path, tmp_path: Path, where: str) -> None:
    out = _copy(finished, tmp_path)
    foreign = out / where
    foreign.parent.mkdir(parents=True, exist_ok=True)
    foreign.write_text("the user's")
    before = _tree(out)
    # a changed teacher reruns every stage: each folder would be replaced
    res = _rkd("run", SMOKE, "--out", str(out), "--set", "teacher.train.lr=0.04")
    assert res.exit_code == 2, res.output
    assert "rkd did not write" in res.output or "not its bundle's" in res.output, res.output
    assert _tree(out) == before


def test_the_last_complete_output_survives_any_number_of_failed_reruns(finished: Path, tmp_path: Path) -> None:
    out = _copy(finished, tmp_path)
    model = (out / "teacher" / "model.safetensors").read_bytes()
    for _ in range(3):  # a changed teacher diverges at once, again and again
        res = _rkd("run", SMOKE, "--out", str(out), "--set", "teacher.train.lr=1e30")
        assert res.exit_code == 4 and "no checkpoint was saved yet" in res.output, res.output
        assert (out / "teacher.previous" / "model.safetensors").read_bytes() == model
        assert "last complete output is kept in" in " ".join(res.output.split())
    # the recipe as it was: the kept teacher comes back instead of being trained again, the rest is up to date
    res = _rkd("run", SMOKE, "--out", str(out))
    assert res.exit_code == 0, res.output
    assert (out / "teacher" / "model.safetensors").read_bytes() == model and not (out / "teacher.previous").exists()
    record = json.loads((out / "run.json").read_text())
    assert record["stages"]["teacher"]["done"] and not record.get("previous")
    assert "restored" in res.output and "teacher: running" not in res.output


def test_a_complete_rerun_replaces_the_kept_output(finished: Path, tmp_path: Path) -> None:
    from rkd.config import load_recipe
    from rkd.pipeline import Pipeline

    out = _copy(finished, tmp_path)
    result = Pipeline(load_recipe(SMOKE, ["verify.n=32"]), run_dir=out, profile_base=REPO).run()
    assert {s.name: s.status for s in result.stages}["verify"] == "ran"
    assert not (out / "verify.previous").exists()
    record = json.loads((out / "run.json").read_text())
    assert "verify.json" in record["stages"]["verify"]["files"]


RECIPE_FILES = ("recipe.resolved.yaml", "metrics.jsonl")


@pytest.mark.parametrize("command", ["teacher", "distill"])
@pytest.mark.parametrize("held", [("best.safetensors", "best.json"), ("model.safetensors", "model.json"),
                                  ("metrics.jsonl",)])
def test_a_training_folder_holding_another_runs_files_is_refused_before_any_write(
        tmp_path: Path, command: str, held: tuple[str, ...]) -> None:
    from rkd.models import create_model, save_checkpoint

    out = tmp_path / "out"
    out.mkdir()
    for name in held:
        (out / name).write_bytes(f"the user's {name}".encode())
    args = [command, SMOKE, "--out", str(out), "--set", "teacher.train.epochs=1", "--set", "student.train.epochs=1"]
    if command == "distill":
        teacher = save_checkpoint(create_model("resnet18", width=0.125), tmp_path / "t.safetensors")
        args += ["--teacher", str(teacher)]
    before = _tree(out)
    res = _rkd(*args)
    assert res.exit_code == 2, res.output
    assert "already holds" in res.output and "Traceback" not in res.output
    assert _tree(out) == before  # nothing overwritten, appended to or added (no recipe.resolved.yaml)


def test_resuming_another_recipes_state_is_refused_before_any_write(tmp_path: Path) -> None:
    import torch

    out = tmp_path / "out"
    out.mkdir()
    torch.save({"format": "rkd-train-state", "fingerprint": "another recipe"}, out / "train_state.pt")
    (out / "recipe.resolved.yaml").write_text("name: another\n")
    before = _tree(out)
    res = _rkd("teacher", SMOKE, "--out", str(out), "--resume")
    assert res.exit_code == 2 and "different recipe" in res.output, res.output
    assert _tree(out) == before
