"""Argument checks shared by the attacks, and the context that freezes a model's parameters during an attack.

Every check raises :class:`rkd.errors.UsageError` with a one-line message; none uses ``assert``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from rkd.errors import UsageError
from rkd.registry import did_you_mean


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` lower-cased when it is one of ``choices`` (lower-case), else a UsageError naming them."""
    if not isinstance(value, str) or value.lower() not in choices:
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        raise UsageError(f"{what} must be one of {', '.join(choices)}; got {value!r}{hint}")
    return value.lower()


def check_eps(eps: float, norm: str) -> float:
    """The radius as a float: in (0, 1] for L-inf, positive and finite for L2/L1 (which may exceed 1)."""
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise UsageError(f"eps must be a number; got {eps!r}") from None
    if norm == "linf":
        if not 0.0 < value <= 1.0:
            raise UsageError(
                f"eps must be in (0, 1] for the L-inf threat model (inputs are in [0, 1]); got {value:g} "
                "(did you mean eps/255?)"
            )
    elif not (value > 0.0 and math.isfinite(value)):
        raise UsageError(f"eps must be positive and finite for the {norm} threat model; got {value:g}")
    return value


def check_positive(what: str, value: float) -> float:
    """``value`` as a positive finite float, else a UsageError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be a positive number; got {value!r}") from None
    if not (v > 0.0 and math.isfinite(v)):
        raise UsageError(f"{what} must be positive and finite; got {v:g}")
    return v


def check_images(x: torch.Tensor) -> torch.Tensor:
    """Checks a float batch (N, ...) with values in [0, 1]; returns it detached (cloned if an inference
    tensor).

    One ``aminmax`` and one host synchronisation per call.
    """
    if not isinstance(x, torch.Tensor):
        raise UsageError(f"x must be a torch.Tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise UsageError(f"x must be a floating-point tensor in [0, 1]; got dtype {x.dtype}")
    if x.dim() < 2:
        raise UsageError(f"x must be a batch shaped (N, C, H, W); got shape {tuple(x.shape)}")
    if x.is_inference():
        x = x.clone()
    x = x.detach()
    if x.numel() > 0:
        lo, hi = torch.aminmax(x)
        if not bool((lo >= 0) & (hi <= 1)):
            raise UsageError(
                f"inputs must be in [0, 1] (got min {float(lo):.4g}, max {float(hi):.4g}); "
                "normalisation belongs inside the model"
            )
    return x


def check_labels(y: torch.Tensor, n: int, device: torch.device, what: str = "y") -> torch.Tensor:
    """Checks integer class indices shaped (n,); returns them on ``device``."""
    if not isinstance(y, torch.Tensor):
        raise UsageError(f"{what} must be a torch.Tensor of class indices; got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise UsageError(f"{what} must hold integer class indices; got dtype {y.dtype}")
    if y.dim() != 1 or y.shape[0] != n:
        raise UsageError(f"{what} must have shape ({n},) to match x; got {tuple(y.shape)}")
    return y.to(device=device, dtype=torch.long)


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Switches ``requires_grad`` off on the parameters that have it, and back on afterwards (even on errors).

    Attack libraries that call ``.backward()`` (pyautoattack's FAB) then leave no ``.grad`` on the model. Speed:
    a first CPU probe saw input gradients 20-35% cheaper without the weight-gradient bookkeeping, but against
    attacks that already call ``torch.autograd.grad`` on the input only it measured 0.97-1.04x
    (benchmarks/results/reference_step-cpu.md).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    """The device of the model's first parameter or buffer (what attack libraries read), else ``fallback``."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return fallback
