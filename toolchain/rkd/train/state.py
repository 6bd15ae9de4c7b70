"""Resumable training state: weights, optimizer, position in the run and RNG states in one atomic file.

Loaded with ``torch.load(weights_only=True)``: plain tensors and containers only, nothing is unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rkd.atomic import atomic_write
from rkd.errors import CheckpointError

STATE_FORMAT = "rkd-train-state"
STATE_VERSION = 1


@dataclass
class Position:
    """Where a run stands: ``epoch`` in progress (0-based) and steps of it already done."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_metric: float = -1.0
    best_epoch: int = -1


def save_train_state(
    path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, position: Position, fingerprint: str
) -> None:
    """Write the state atomically (the previous file stays valid until the new one is complete)."""
    payload: dict[str, Any] = {
        "format": STATE_FORMAT,
        "format_version": STATE_VERSION,
        "fingerprint": fingerprint,
        "position": vars(position).copy(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    atomic_write(path, lambda p: torch.save(payload, p))


def load_train_state(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    fingerprint: str,
) -> Position:
    """Restore model, optimizer and RNG states; return the position to continue from.

    Raises:
        CheckpointError: the file is not a train state of this format, or it belongs to a different recipe.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read means the file is unusable
        raise CheckpointError(f"{path}: cannot read the training state ({exc.__class__.__name__}); "
                              "delete it to start the run over") from None
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not an rkd training state")
    if payload.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"{path}: this run was started with a different recipe; resume with the same recipe, "
            "or choose another --out to start a new run"
        )
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["rng_cpu"])
    if payload["rng_cuda"] and torch.cuda.is_available() and len(payload["rng_cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(payload["rng_cuda"])
    return Position(**payload["position"])
