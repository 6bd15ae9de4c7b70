"""``train.compile_attack: auto``: the measured choice between the eager and the compiled attack model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from rkd.config import StudentConfig, ThreatConfig, TrainConfig
from rkd.data import load_dataset, split_holdout
from rkd.distill.pgd_at import PgdAt
from rkd.models import create_model
from rkd.train import fit
from rkd.train.build import fingerprint
from rkd.train.compile_choice import COMPILE_COST_S, MIN_RUN_IN_COMPILE_COSTS, TIMED_STEPS, CompileTrial
from rkd.train.metrics import read_metrics

LONG_RUN = 10_000  # steps: a run whose remaining time repays a compile at 1 s a step


class _Twin(nn.Module):
    """Stands for a compiled model: the same output, or a compile error on call."""

    def __init__(self, model: nn.Module, fail: bool = False) -> None:
        super().__init__()
        self.model, self.fail, self.calls = model, fail, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail:
            raise RuntimeError("backend compiler failed\nsecond line")
        return self.model(x)


class _Harness:
    def __init__(self, remaining: int, fail: bool = False) -> None:
        self.eager = nn.Linear(3, 2)
        self.installed: list[nn.Module] = []
        self.compiled: list[_Twin] = []

        def compile_fn(model: nn.Module) -> nn.Module:
            twin = _Twin(model, fail)
            self.compiled.append(twin)
            return twin

        self.trial = CompileTrial(eager=self.eager, install=self.installed.append, remaining_steps=remaining,
                                  compile_fn=compile_fn)

    @property
    def current(self) -> nn.Module:
        return self.installed[-1] if self.installed else self.eager

    def steps(self, seconds: list[float]) -> dict | None:
        decision = None
        for s in seconds:
            self.current(torch.zeros(1, 3))  # the step's attack calls the installed model
            decision = self.trial.after_step(s) or decision
        return decision


def _eager_phase(step_s: float = 1.0) -> list[float]:
    return [50.0] + [step_s] * TIMED_STEPS  # a slow warm-up step, then the timed ones


def test_short_run_never_compiles() -> None:
    h = _Harness(remaining=int(MIN_RUN_IN_COMPILE_COSTS * COMPILE_COST_S) // 2)
    decision = h.steps(_eager_phase())
    assert decision is not None and decision["choice"] == "eager" and "repay" in decision["reason"]
    assert h.compiled == [] and h.current is h.eager
    assert h.trial.after_step(1.0) is None  # decided once


def test_faster_compiled_model_is_kept() -> None:
    h = _Harness(remaining=LONG_RUN)
    assert h.steps(_eager_phase()) is None
    assert len(h.compiled) == 1 and h.current is not h.eager  # the compiled twin now runs the attack
    decision = h.steps([80.0] + [0.7] * TIMED_STEPS)  # the compile step, then faster steps
    assert decision["choice"] == "compiled" and decision["compile_step_s"] == 80.0
    assert decision["eager_step_s"] == 1.0 and decision["compiled_step_s"] == 0.7
    calls = h.compiled[0].calls
    h.current(torch.zeros(1, 3))
    assert h.compiled[0].calls == calls + 1  # still the compiled model after the decision


@pytest.mark.parametrize("compiled_s", [1.2, 0.97])  # slower, and within the noise margin
def test_compiled_model_not_faster_is_dropped(compiled_s: float) -> None:
    h = _Harness(remaining=LONG_RUN)
    h.steps(_eager_phase())
    decision = h.steps([80.0] + [compiled_s] * TIMED_STEPS)
    assert decision["choice"] == "eager" and h.current is h.eager


def test_compile_failure_falls_back_to_eager() -> None:
    h = _Harness(remaining=LONG_RUN, fail=True)
    h.steps(_eager_phase())
    x = torch.ones(1, 3)
    assert torch.equal(h.current(x), h.eager(x))  # the step still runs, eagerly
    decision = h.trial.after_step(2.0)
    assert decision["choice"] == "eager" and "compiling failed (RuntimeError: backend compiler failed)" in \
        decision["reason"] and h.current is h.eager


def test_fingerprint_ignores_compile_attack() -> None:
    base = StudentConfig(model={"name": "resnet18"})

    def with_train(**kw) -> StudentConfig:
        return base.model_copy(update={"train": base.train.model_copy(update=kw)})

    fps = {fingerprint({"data": 1}, with_train(compile_attack=v), 0) for v in ("auto", True, False)}
    assert len(fps) == 1
    assert fingerprint({"data": 1}, base, 0) != fingerprint({"data": 1}, with_train(amp="bf16"), 0)


def test_config_accepts_auto_and_booleans() -> None:
    assert TrainConfig().compile_attack == "auto"
    assert TrainConfig(compile_attack=True).compile_attack is True
    with pytest.raises(ValueError):
        TrainConfig(compile_attack="sometimes")


def test_fit_records_the_choice(tmp_path: Path) -> None:
    full = load_dataset("synthetic", "train", n=192, num_classes=4, seed=0)
    train, hold = split_holdout(full, 32, 0)
    torch.manual_seed(0)
    method = PgdAt(create_model("resnet18", num_classes=4, width=0.125), steps=2)
    cfg = TrainConfig(epochs=1, lr=0.05, eval_n=0, log_every=1)
    fit(method, train, hold, cfg, run_dir=tmp_path, device="cpu", batch_size=32, threat=ThreatConfig(),
        fingerprint="fp", seed=0)
    recs = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r.get("event") == "compile_attack"]
    assert len(recs) == 1 and recs[0]["choice"] == "eager" and recs[0]["global_step"] == 1 + TIMED_STEPS
    assert method.attack_model is method.student
