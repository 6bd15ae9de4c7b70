"""`rkd distill` through the CLI: every method on the smoke recipe, a killed run resumed, and DDP (2 gloo
processes) against one process on the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rkd.cli.app import app
from rkd.distill import METHODS

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "recipes" / "smoke.yaml")
runner = CliRunner()


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("t") / "teacher"
    res = runner.invoke(app, ["teacher", SMOKE, "--out", str(out), "--set", "teacher.train.epochs=1"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out / "model.safetensors"


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_distils_through_the_cli(method: str, teacher: Path, tmp_path: Path) -> None:
    extra = ", warmup_epochs: 0" if method == "iad" else ""  # a 1-epoch run must leave IAD's warm-up
    res = runner.invoke(app, [
        "distill", SMOKE, "--teacher", str(teacher), "--out", str(tmp_path / "s"),
        "--set", f"student.method={{name: {method}, steps: 2{extra}}}", "--set", "student.train.epochs=1",
        "--set", "student.train.eval_n=16",
    ], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    from rkd.models import load_checkpoint

    model, sidecar = load_checkpoint(tmp_path / "s" / "model.safetensors")
    assert sidecar["metadata"]["method"]["name"] == method and sidecar["metadata"]["stage"] == "distill"
    recs = [json.loads(line) for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "eval" for r in recs)


def test_a_method_that_needs_a_teacher_without_one_is_a_usage_error(tmp_path: Path) -> None:
    res = runner.invoke(app, ["distill", SMOKE, "--out", str(tmp_path / "s")])
    assert res.exit_code == 2 and "needs a teacher" in res.output
    res = runner.invoke(app, ["distill", SMOKE, "--set", "student.method.temprature=2", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "did you mean 'temperature'" in res.output


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_killed_run_resumes_to_the_same_epoch_count(teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    args = [sys.executable, "-m", "rkd", "distill", SMOKE, "--teacher", str(teacher), "--out", str(out),
            "--set", "student.train.epochs=2", "--set", "student.train.checkpoint_every_steps=1",
            "--set", "student.train.eval_n=0"]
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "train_state.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not state.exists():
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists() and not (out / "model.safetensors").exists(), "the run was not killed mid-way"
    done = subprocess.run(args + ["--resume"], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    from rkd.models import load_checkpoint

    _, sidecar = load_checkpoint(out / "model.safetensors")
    assert sidecar["metadata"]["epoch"] == 2
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert any(r.get("event") == "resume" for r in recs)
    steps = [r["global_step"] for r in recs if "loss" in r]
    assert steps[-1] == 2 * (192 // 32)  # 256 synthetic images - 64 held out, batch 32: 6 steps an epoch


def test_ddp_two_processes_match_one_process(tmp_path: Path) -> None:
    """Same first-step loss and same updated weights (1e-5) with 2 gloo ranks as with 1, same global batch.

    tiny_cnn (no batch norm) and PGD-AT from a zero start: nothing depends on how the batch is split."""
    common = ["distill", SMOKE, "--set", "student.model={name: tiny_cnn, width: 0.5}",
              "--set", "student.method={name: pgd_at, steps: 2, start: zero}", "--set", "student.train.epochs=1",
              "--set", "student.train.eval_n=0", "--set", "data.synthetic_n=96", "--set", "data.holdout=0",
              "--set", "data.batch_size=32", "--set", "student.train.log_every=1", "--device", "cpu"]
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = subprocess.run([sys.executable, "-m", "rkd", *common, "--out", str(one)], env=_env(),
                        capture_output=True, text=True, timeout=300)
    assert r1.returncode == 0, r1.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29641",
                "-m", "rkd", *common, "--out", str(two)]
    r2 = subprocess.run(torchrun, env=_env(), capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    m1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    first1 = next(r for r in m1 if "loss" in r)
    first2 = next(r for r in m2 if "loss" in r)
    assert first2["loss"] == pytest.approx(first1["loss"], abs=1e-5)
    from rkd.models import load_checkpoint

    a, _ = load_checkpoint(one / "model.safetensors")
    b, sidecar = load_checkpoint(two / "model.safetensors")
    assert sidecar["metadata"]["world_size"] == 2
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(va, vb, atol=1e-5), k


def test_ddp_adv_path_low_memory_matches_the_one_graph_step(teacher: Path, tmp_path: Path) -> None:
    """adv_path's low_memory step under DDP (2 gloo ranks) defers the gradient all-reduce to its last chunk
    (``no_sync``): the same weights after a step as the one-graph step's single backward."""
    from rkd.models import load_checkpoint

    weights = []
    for i, low in enumerate(("false", "true")):
        out = tmp_path / f"low-{low}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={29651 + i}",
               "-m", "rkd", "distill", SMOKE, "--teacher", str(teacher), "--out", str(out),
               "--set", "student.model={name: tiny_cnn, width: 0.5}",
               "--set", f"student.method={{name: adv_path, steps: 2, low_memory: {low}}}",
               "--set", "student.train.epochs=1", "--set", "student.train.eval_n=0", "--set", "data.synthetic_n=32",
               "--set", "data.holdout=0", "--set", "data.batch_size=32", "--device", "cpu"]
        res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        model, sidecar = load_checkpoint(out / "model.safetensors")
        assert sidecar["metadata"]["world_size"] == 2
        weights.append(model.state_dict())
    for (k, va), vb in zip(weights[0].items(), weights[1].values(), strict=True):
        assert torch.allclose(va, vb, atol=1e-5), k


def test_a_ddp_run_killed_mid_way_resumes_on_a_different_number_of_processes(tmp_path: Path) -> None:
    """Kill a 2-process run after its first checkpoint, resume it with 1 process: same epochs, valid result."""
    out = tmp_path / "s"
    common = ["distill", SMOKE, "--set", "student.model={name: tiny_cnn, width: 0.5}",
              "--set", "student.method={name: pgd_at, steps: 3}", "--set", "student.train.epochs=40",
              "--set", "student.train.eval_n=0", "--set", "student.train.checkpoint_every_steps=1",
              "--set", "data.holdout=0", "--device", "cpu", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29643", "-m", "rkd",
         *common], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    state = out / "train_state.pt"
    deadline = time.time() + 180
    while time.time() < deadline and not state.exists():
        time.sleep(0.2)
    time.sleep(0.3)
    # torchrun starts its workers in sessions of their own: kill every process of this run, agent and workers
    subprocess.run(["pkill", "-9", "-f", str(out)], check=False)
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and subprocess.run(["pgrep", "-f", str(out)], capture_output=True).returncode == 0:
        time.sleep(0.2)
    assert state.exists() and not (out / "model.safetensors").exists(), "the run was not killed mid-way"
    done = subprocess.run([sys.executable, "-m", "rkd", *common, "--resume"], env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    from rkd.models import load_checkpoint

    model, sidecar = load_checkpoint(out / "model.safetensors")
    assert sidecar["metadata"]["epoch"] == 40
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    resumed = [r for r in recs if r.get("event") == "resume"]
    assert resumed and resumed[-1]["global_step"] > 0
    assert [r["global_step"] for r in recs if "loss" in r][-1] == 40 * (256 // 32)
