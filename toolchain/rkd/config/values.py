"""Recipe value types: fractions like ``8/255``, attack radii, and the strict base model of every section."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

SCHEMA_VERSION = 1


def parse_fraction(value: Any) -> float:
    """Parse ``8/255``, ``"0.031"`` or a number into a float (the report keeps the recipe's spelling)."""
    if isinstance(value, bool):
        raise ValueError("expected a number or a fraction like 8/255, got a boolean")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            if "/" in text:
                num, den = text.split("/", 1)
                return float(num) / float(den)
            return float(text)
        except (ValueError, ZeroDivisionError):
            pass
    raise ValueError(f"expected a number or a fraction like 8/255, got {value!r}")


def parse_eps(value: Any) -> float:
    """Parse an attack radius and check it lies in (0, 1] (inputs live in [0, 1])."""
    eps = parse_fraction(value)
    if not 0.0 < eps <= 1.0:
        raise ValueError(f"must be in (0, 1] on [0,1] inputs, got {eps:g} (write e.g. 8/255)")
    return eps


def parse_radius(value: Any, norm: str) -> float:
    """An attack radius or step for ``norm``: L-inf in (0, 1] (:func:`parse_eps`); L2 any positive finite value
    (an L2 ball on [0,1] images may exceed 1, e.g. 1.5)."""
    if norm == "linf":
        return parse_eps(value)
    r = parse_fraction(value)
    if not (math.isfinite(r) and r > 0):
        raise ValueError(f"must be positive and finite for an L2 radius, got {r:g}")
    return r


Fraction = Annotated[float, BeforeValidator(parse_fraction)]
Eps = Annotated[float, BeforeValidator(parse_eps)]


class StrictModel(BaseModel):
    """Base of every recipe section: unknown keys are errors, assignments are validated, and types are strict: a
    count takes an integer (not ``true``, ``2.0`` or ``"2"``), a threshold a number (not a boolean or a string)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)
