"""The training loop: checkpoints, metrics, resume after a kill, refusal to overwrite, divergence handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rkd.config import ThreatConfig, TrainConfig
from rkd.data import load_dataset, split_holdout
from rkd.distill.base import DistillMethod, StepOutput
from rkd.distill.pgd_at import PgdAt
from rkd.errors import CheckpointError, TrainingDiverged, UsageError
from rkd.models import create_model, load_checkpoint
from rkd.train import fit
from rkd.train.metrics import read_metrics
from rkd.train.schedule import lr_at

THREAT = ThreatConfig()


@pytest.fixture(scope="module")
def data():
    full = load_dataset("synthetic", "train", n=192, num_classes=4, seed=0)
    return split_holdout(full, 32, 0)


def _method(seed: int = 0) -> PgdAt:
    torch.manual_seed(seed)
    return PgdAt(create_model("resnet18", num_classes=4, width=0.125), steps=2)


def _cfg(**kw) -> TrainConfig:
    base = {"epochs": 2, "lr": 0.05, "eval_n": 32, "eval_pgd_steps": 2, "log_every": 1}
    return TrainConfig(**(base | kw))


def _fit(method, data, run_dir, cfg, **kw):
    train, hold = data
    return fit(method, train, hold, cfg, run_dir=run_dir, device="cpu", batch_size=32, threat=THREAT,
               fingerprint="fp", seed=0, **kw)


def test_run_writes_checkpoints_and_metrics(tmp_path: Path, data) -> None:
    res = _fit(_method(), data, tmp_path, _cfg())
    model, sidecar = load_checkpoint(res.checkpoint)
    assert sidecar["metadata"]["kind"] == "final" and model.spec.num_classes == 4
    assert res.best_checkpoint is not None and res.best_checkpoint.exists()
    recs = read_metrics(tmp_path / "metrics.jsonl")
    evals = [r for r in recs if r.get("event") == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2]
    steps = [r for r in recs if "loss" in r]
    assert len(steps) == 2 * 5 and all(r["loss"] > 0 for r in steps)
    assert recs[-1]["event"] == "end"


def test_existing_run_is_not_overwritten_without_resume(tmp_path: Path, data) -> None:
    _fit(_method(), data, tmp_path, _cfg(epochs=1))
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(UsageError, match="--resume"):
        _fit(_method(), data, tmp_path, _cfg(epochs=1))
    assert (tmp_path / "model.safetensors").read_bytes() == before


class _KillAfter:
    """A progress sink that simulates a kill (KeyboardInterrupt) after ``n`` steps."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_start(self, **kw) -> None: ...
    def on_event(self, message: str) -> None: ...
    def on_end(self) -> None: ...

    def on_step(self, *, step: int, epoch: int, metrics: dict) -> None:
        if step >= self.n:
            raise KeyboardInterrupt


def test_resume_after_a_kill_mid_epoch_matches_an_uninterrupted_run(tmp_path: Path, data) -> None:
    cfg = _cfg(epochs=2, checkpoint_every_steps=2)
    ref = _fit(_method(), data, tmp_path / "ref", cfg)
    with pytest.raises(KeyboardInterrupt):
        _fit(_method(), data, tmp_path / "run", cfg, progress=_KillAfter(7))  # killed in epoch 2 (5 steps/epoch)
    assert not (tmp_path / "run" / "model.safetensors").exists()
    res = _fit(_method(seed=123), data, tmp_path / "run", cfg, resume=True)
    assert res.resumed_from_step == 6 and res.epochs == 2
    a, _ = load_checkpoint(ref.checkpoint)
    b, _ = load_checkpoint(res.checkpoint)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(va.float(), vb.float(), atol=1e-5), k


def test_resume_with_a_different_recipe_is_refused(tmp_path: Path, data) -> None:
    cfg = _cfg(epochs=2, checkpoint_every_steps=2)
    with pytest.raises(KeyboardInterrupt):
        _fit(_method(), data, tmp_path, cfg, progress=_KillAfter(3))
    train, hold = data
    with pytest.raises(CheckpointError, match="different recipe"):
        fit(_method(), train, hold, cfg, run_dir=tmp_path, device="cpu", batch_size=32, threat=THREAT,
            fingerprint="other", resume=True)


class _Exploding(DistillMethod):
    """Finite loss for two steps, then NaN."""

    name = "exploding"

    def __init__(self, student: torch.nn.Module) -> None:
        super().__init__(student)
        self.calls = 0

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        self.calls += 1
        logits = self.student(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        if self.calls > 7:
            loss = loss * float("nan")
        return StepOutput(loss, logits, {"ce": loss.detach()})


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path, data) -> None:
    method = _Exploding(create_model("resnet18", num_classes=4, width=0.125))
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        _fit(method, data, tmp_path, _cfg(epochs=3))
    state = torch.load(tmp_path / "train_state.pt", weights_only=True)
    assert state["position"]["epoch"] == 1  # the epoch-1 state, written before the NaN
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "model.safetensors").exists()
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["event"] == "diverged"


def test_schedules() -> None:
    ms = TrainConfig(epochs=200, lr=0.1)
    assert lr_at(0, 10, ms) == pytest.approx(0.1)
    assert lr_at(100 * 10, 10, ms) == pytest.approx(0.01)
    assert lr_at(150 * 10, 10, ms) == pytest.approx(0.001)
    cos = TrainConfig(epochs=10, lr=0.1, schedule="cosine")
    assert lr_at(0, 10, cos) == pytest.approx(0.1) and lr_at(50, 10, cos) == pytest.approx(0.05)
    warm = TrainConfig(epochs=10, lr=0.1, warmup_epochs=1, schedule="constant")
    assert lr_at(0, 10, warm) == pytest.approx(0.01) and lr_at(9, 10, warm) == pytest.approx(0.1)


def test_a_run_directory_in_use_is_refused(tmp_path: Path, data) -> None:
    import fcntl

    with open(tmp_path / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UsageError, match="another process is training"):
            _fit(_method(), data, tmp_path, _cfg(epochs=1))
    _fit(_method(), data, tmp_path, _cfg(epochs=1))  # released: the run goes ahead


def test_a_method_that_backpropagates_itself_trains_like_one_that_does_not(tmp_path: Path, data) -> None:
    """adv_path's low_memory step writes the gradient itself (``backward_done``); the loop then only steps the
    optimizer: the same update as the one-graph step (one step: sign-gradient attacks would let float rounding
    grow over several)."""
    from rkd.distill.adv_path import AdvPath

    def flat(model: torch.nn.Module) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    train, hold = data
    finals = []
    for low in (False, True):
        torch.manual_seed(0)
        teacher = create_model("resnet18", num_classes=4, width=0.125)
        student = create_model("resnet18", num_classes=4, width=0.125)
        start = flat(student)
        method = AdvPath(student, teacher, steps=2, low_memory=low)
        res = fit(method, train, hold, _cfg(epochs=1, eval_n=0), run_dir=tmp_path / str(low), device="cpu",
                  batch_size=len(train), threat=THREAT, fingerprint="fp", seed=0)
        finals.append(flat(load_checkpoint(res.checkpoint)[0]))
    moved = float((finals[0] - start).norm())
    assert moved > 1e-3 and float((finals[1] - finals[0]).norm()) < 1e-4 * moved


class _Events:
    """A progress sink that keeps the one-line events."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def on_start(self, **_: object) -> None:
        pass

    def on_step(self, **_: object) -> None:
        pass

    def on_event(self, message: str) -> None:
        self.events.append(message)

    def on_end(self) -> None:
        pass


@pytest.mark.parametrize(("native", "warned"), [(False, True), (True, False), (None, False)])
def test_bf16_on_a_cpu_without_bf16_units_is_warned_about(tmp_path: Path, data, monkeypatch, native,
                                                          warned) -> None:
    monkeypatch.setattr("rkd.environment.cpu_runs_bf16", lambda: native)
    sink = _Events()
    res = _fit(_method(), data, tmp_path, _cfg(epochs=1, amp="bf16", eval_every=0), progress=sink)
    assert res.checkpoint.exists()
    assert any("AMX-BF16" in e for e in sink.events) is warned
