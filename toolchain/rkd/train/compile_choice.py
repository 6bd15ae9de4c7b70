"""``train.compile_attack: auto``: compile the inner attack's model only where it measures faster.

Whether ``torch.compile`` pays for the attack depends on the model, the batch and the device: on a 2-core AMD EPYC
it made the RSLAD step of a full-width MobileNetV2 1.41x faster and ARD's 1.11x, an earlier ``rkd distill`` of
MobileNetV2 0.25 gained nothing, and its first call compiles for 50-100 s on that CPU
(docs/RESULTS.md). So ``auto`` measures on the run itself, the way ``torch.backends.cudnn.benchmark`` picks
convolution kernels: a few eager steps are timed, then (only when the run is long enough to repay a compile) the
attack model is compiled and a few compiled steps are timed, and the faster one is kept for the rest of the run.
A compile that fails (no C compiler, an unsupported operator) falls back to the eager model with a warning. The
choice is written to ``metrics.jsonl`` (``event: compile_attack``); a resumed run measures again. Compiled and
eager attacks compute the same function up to floating-point rounding, so the choice changes speed, not the
method; set ``true`` or ``false`` for runs that must repeat bit for bit.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

#: Expected seconds of the first compiled call (measured 50-96 s cold on the 2-core CPU, docs/RESULTS.md).
COMPILE_COST_S = 90.0
#: Trial only when the run's remaining eager steps are estimated to take this many compile costs or more.
MIN_RUN_IN_COMPILE_COSTS = 20.0
#: Timed steps of each kind (after one warm-up step each).
TIMED_STEPS = 3
#: Keep the compiled model only when its median step is below this fraction of the eager one.
KEEP_BELOW = 0.95


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


class _Guarded(nn.Module):
    """The compiled model, or the eager one from the first call where compiling fails."""

    def __init__(self, compiled: nn.Module, eager: nn.Module) -> None:
        super().__init__()
        self.compiled, self.eager = compiled, eager
        self.error: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.error is None:
            try:
                return self.compiled(x)
            except Exception as exc:  # torch._dynamo / inductor raise many kinds; any of them means "no compile"
                self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        return self.eager(x)


@dataclass
class CompileTrial:
    """The state of one run's ``auto`` choice; call :meth:`after_step` with each training step's seconds.

    Args:
        eager: the model the attack runs eagerly (the bare student).
        install: sets the method's attack model (called with the compiled model and, after the trial, the kept
            one).
        remaining_steps: training steps left in this run when the trial starts.
        compile_fn: makes the compiled twin (``rkd.attacks.compile_attack_model``; a test passes its own).
        reduce: makes a measured seconds value the same on every rank (the sum over ranks when distributed).
    """

    eager: nn.Module
    install: Callable[[nn.Module], None]
    remaining_steps: int
    compile_fn: Callable[[nn.Module], nn.Module]
    reduce: Callable[[float], float] = float
    eager_s: list[float] = field(default_factory=list)
    compiled_s: list[float] = field(default_factory=list)
    compile_s: float | None = None
    phase: str = "eager"  # eager -> compiled -> done
    guarded: _Guarded | None = None
    seen: int = 0

    def after_step(self, seconds: float) -> dict[str, Any] | None:
        """Record one step; return the decision record on the step that decides, else None."""
        if self.phase == "done":
            return None
        self.seen += 1
        seconds = self.reduce(seconds)
        if self.phase == "eager":
            if self.seen > 1:  # the first step warms up
                self.eager_s.append(seconds)
            if len(self.eager_s) < TIMED_STEPS:
                return None
            step = statistics.median(self.eager_s)
            left = max(0, self.remaining_steps - self.seen) * step
            if left < MIN_RUN_IN_COMPILE_COSTS * COMPILE_COST_S:
                return self._decide(False, f"the run's remaining ~{left:.0f} s would not repay a "
                                           f"~{COMPILE_COST_S:.0f} s compile")
            self.guarded = _Guarded(self.compile_fn(self.eager), self.eager)
            self.install(self.guarded)
            self.phase, self.seen = "compiled", 0
            return None
        assert self.guarded is not None
        if self.guarded.error is not None:
            return self._decide(False, f"compiling failed ({self.guarded.error}); the attack runs eagerly")
        if self.seen == 1:
            self.compile_s = seconds  # the compile and the first compiled step
        else:
            self.compiled_s.append(seconds)
        if len(self.compiled_s) < TIMED_STEPS:
            return None
        ratio = statistics.median(self.compiled_s) / statistics.median(self.eager_s)
        keep = ratio < KEEP_BELOW
        return self._decide(keep, f"compiled step {ratio:.2f}x the eager one" + ("" if keep else
                                   f" (kept only below {KEEP_BELOW:.2f}x)"))

    def _decide(self, keep: bool, reason: str) -> dict[str, Any]:
        self.phase = "done"
        if not keep:
            self.install(self.eager)
        return {"event": "compile_attack", "choice": "compiled" if keep else "eager", "reason": reason,
                "eager_step_s": _median(self.eager_s), "compiled_step_s": _median(self.compiled_s),
                "compile_step_s": None if self.compile_s is None else round(self.compile_s, 2)}
