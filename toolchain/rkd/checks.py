"""Argument checks that need no torch, shared across the layers (the attacks, the TensorRT build, the quantize
request, the data sets). Each raises :class:`rkd.errors.UsageError` with a one-line message."""

from __future__ import annotations

from typing import Any

from rkd.errors import UsageError


def check_int(what: str, value: Any, minimum: int = 1) -> int:
    """``value`` when it is an int (not a bool) >= ``minimum``, else a UsageError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value
