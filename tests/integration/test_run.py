"""`rkd run recipes/smoke.yaml` through the real CLI: every artifact and a passing report; a second run skips
every stage; a changed field reruns only the stages downstream of it; a tightened gate exits 1; a run killed
mid-distill completes with --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rkd.cli.app import app
from rkd.config import load_recipe
from rkd.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "recipes" / "smoke.yaml")
runner = CliRunner()


def _statuses(recipe_overrides: list[str], out: Path) -> dict[str, str]:
    rec = load_recipe(SMOKE, recipe_overrides)
    result = Pipeline(rec, run_dir=out, profile_base=REPO).run()
    return {s.name: s.status for s in result.stages}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "smoke"
    cwd = os.getcwd()
    os.chdir(REPO)  # profiles are looked up in ./export, as for a user in the repository
    try:
        res = runner.invoke(app, ["run", SMOKE, "--out", str(out)], catch_exceptions=False)
    finally:
        os.chdir(cwd)
    assert res.exit_code == 0, res.output
    assert "PASS" in res.output
    return out


def test_smoke_run_writes_every_artifact_and_a_passing_report(finished: Path) -> None:
    for rel in ("teacher/model.safetensors", "student/model.safetensors", "bundle/model.onnx",
                "bundle/model.int8.onnx", "bundle/manifest.json", "verify/verify.json", "verify/verify.md",
                "verify/verify.junit.xml", "run.json", "recipe.resolved.yaml"):
        assert (finished / rel).is_file(), rel
    report = json.loads((finished / "verify" / "verify.json").read_text())
    assert report["passed"] and report["n"] == 64 and [g["source"] for g in report["gates"]] == ["recipe smoke"] * 2
    record = json.loads((finished / "run.json").read_text())["stages"]
    assert set(record) == {"teacher", "distill", "export", "quantize", "verify"}
    assert all(entry["done"] for entry in record.values())


def test_a_second_run_skips_and_a_change_reruns_only_downstream(finished: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(finished, out)  # a moved run directory still knows its artifacts
    assert set(_statuses([], out).values()) == {"skipped"}
    assert _statuses(["verify.n=32"], out) == {"teacher": "skipped", "distill": "skipped", "export": "skipped",
                                                "quantize": "skipped", "verify": "ran"}
    assert _statuses(["verify.n=32", "deploy.calibration_n=64"], out) == {
        "teacher": "skipped", "distill": "skipped", "export": "skipped", "quantize": "ran", "verify": "ran"}
    changed = _statuses(["verify.n=32", "deploy.calibration_n=64", "student.train.lr=0.02"], out)
    assert changed == {"teacher": "skipped", "distill": "ran", "export": "ran", "quantize": "ran", "verify": "ran"}


def _rkd_run(out: Path, *sets: str):
    """``rkd run SMOKE --out OUT --set ...`` from the repository root (where the named profiles are)."""
    args = ["run", SMOKE, "--out", str(out)]
    for item in sets:
        args += ["--set", item]
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        return runner.invoke(app, args, catch_exceptions=False)
    finally:
        os.chdir(cwd)


def _copy(finished: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(finished, tmp_path / "copy"))


def test_a_tightened_gate_exits_1(finished: Path, tmp_path: Path) -> None:
    out = _copy(finished, tmp_path)
    res = _rkd_run(out, "verify.gates=['robust_acc>1']")
    assert res.exit_code == 1, res.output
    assert "FAIL" in res.output
    junit = (out / "verify" / "verify.junit.xml").read_text()
    assert 'name="gate robust_acc&gt;1"' in junit and "<failure" in junit


def test_a_gate_the_verify_stage_cannot_judge_is_refused_before_anything_changes(
        finished: Path, tmp_path: Path) -> None:
    out = _copy(finished, tmp_path)
    before = sorted(p.name for p in (out / "verify").iterdir())
    res = _rkd_run(out, "verify.gates=['cw_acc>=0.1']")
    assert res.exit_code == 2 and "unknown metric 'cw_acc' (add 'cw' to the attacks)" in res.output, res.output
    assert sorted(p.name for p in (out / "verify").iterdir()) == before  # the previous report is still there


def test_a_failed_stage_keeps_its_previous_output_aside(finished: Path, tmp_path: Path) -> None:
    out = _copy(finished, tmp_path)
    model = (out / "teacher" / "model.safetensors").read_bytes()
    res = _rkd_run(out, "teacher.train.lr=1e30")  # a changed teacher reruns from scratch and diverges at once
    assert res.exit_code == 4 and "no checkpoint was saved yet" in res.output, res.output
    assert (out / "teacher.previous" / "model.safetensors").read_bytes() == model


def test_a_verify_section_without_gates_is_refused_before_anything_runs(tmp_path: Path) -> None:
    out = tmp_path / "ungated"
    res = _rkd_run(out, "verify.gates=[]")
    assert res.exit_code == 2 and "verify.gates is empty, so verify could not fail" in " ".join(res.output.split())
    assert not (out / "student").exists()


def test_a_run_killed_mid_distill_completes_with_resume(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "rkd", "run", SMOKE, "--out", str(out),
            "--set", "student.train.checkpoint_every_steps=1", "--set", "student.train.eval_n=0"]
    proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "student" / "train_state.pt"
    deadline = time.time() + 180
    while time.time() < deadline and not state.exists():
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists() and not (out / "student" / "model.safetensors").exists(), "not killed mid-distill"
    done = subprocess.run(args + ["--resume"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    stages = json.loads((out / "run.json").read_text())["stages"]
    assert all(entry["done"] for entry in stages.values())
    assert "resumed" in done.stdout and "skipped" in done.stdout  # teacher skipped, distill resumed
    recs = [json.loads(line) for line in (out / "student" / "metrics.jsonl").read_text().splitlines() if line]
    assert any(r.get("event") == "resume" for r in recs)


def test_a_second_run_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    from rkd.atomic import try_lock
    from rkd.errors import UsageError

    out = tmp_path / "busy"
    out.mkdir()
    holder = try_lock(out / ".run.lock")
    assert holder is not None and try_lock(out / ".run.lock") is None
    try:
        with pytest.raises(UsageError, match="another rkd run is using"):
            Pipeline(load_recipe(SMOKE), run_dir=out, profile_base=REPO).run()
    finally:
        holder.close()
    assert not (out / "teacher").exists()  # nothing ran
