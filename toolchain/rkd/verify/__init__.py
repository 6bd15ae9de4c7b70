"""Robustness evaluation: the attack suite (torch models now; exported engines through the same suite)."""

from __future__ import annotations

from rkd.verify.suite import AttackSpec, RobustnessResult, evaluate_robustness, parse_attacks

__all__ = ["AttackSpec", "RobustnessResult", "evaluate_robustness", "parse_attacks"]
