"""Wilson intervals and the registry's did-you-mean errors."""

from __future__ import annotations

import pytest

from rkd.errors import UsageError
from rkd.registry import Registry
from rkd.stats import wilson_interval


def test_wilson_matches_published_values() -> None:
    # Newcombe (1998), Table I: 81/263 -> 0.2553 to 0.3662 (95%).
    lo, hi = wilson_interval(81, 263)
    assert lo == pytest.approx(0.2553, abs=5e-4) and hi == pytest.approx(0.3662, abs=5e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    lo, hi = wilson_interval(5, 10)
    assert lo < 0.5 < hi and hi - 0.5 == pytest.approx(0.5 - lo)


def test_wilson_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_registry_did_you_mean_and_duplicates() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("mobilenet_v2")(1)
    with pytest.raises(UsageError, match="did you mean 'mobilenet_v2'"):
        reg.get("mobilenetv2")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("mobilenet_v2")(2)
    assert reg.names() == ["mobilenet_v2"] and "mobilenet_v2" in reg
