"""rkd's resumable AutoAttack state (safetensors): per-sample outcome codes, the adversarial examples found so
far and the attack in progress, refused when made for another model, other inputs or other settings.

pyautoattack 0.2.0's own ``state_path`` cannot resume (it writes the attack set with ``json.dump(default=str)``
and reads it back as a string), so :func:`rkd.attacks.run_autoattack` keeps this file instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rkd.errors import UsageError

STATE_FORMAT = "rkd-autoattack-state/1"
#: Codes per sample: ROBUST so far, CLEAN_WRONG, or i + 1 = broken by attacks[i].
ROBUST = -1
CLEAN_WRONG = 0


def model_sha256(model: nn.Module) -> str:
    """sha256 of the model's parameters and buffers (shapes, dtypes, values, in order; not their names, so a
    wrapper around the same model matches): a state file made for another model is refused."""
    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class AutoAttackState:
    """Per-sample codes, the attack in progress and what was measured so far; :meth:`save` / :meth:`load`."""

    config: dict
    codes: torch.Tensor  # int16 (N,), CPU
    attempted: torch.Tensor  # bool (N,), CPU: points the current attack has finished
    current: int  # index of the attack in progress; len(attacks) when done
    seconds: dict[str, float]
    messages: list[str]

    def save(self, path: Path, x_adv: torch.Tensor) -> None:
        from safetensors.torch import save_file

        broken = (self.codes > 0).nonzero().squeeze(1)
        tensors = {
            "codes": self.codes.contiguous(),
            "attempted": self.attempted.contiguous(),
            "adv_idx": broken.contiguous(),
            "adv": x_adv[broken.to(x_adv.device)].detach().to("cpu").contiguous(),
        }
        meta = {
            "format": STATE_FORMAT,
            "config": json.dumps(self.config, sort_keys=True),
            "current": str(self.current),
            "seconds": json.dumps(self.seconds),
            "messages": json.dumps(self.messages),
        }
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, config: dict, x_adv: torch.Tensor) -> AutoAttackState:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is no dict
            if meta.get("format") != STATE_FORMAT:
                raise ValueError(f"format {meta.get('format')!r}")
            saved = json.loads(meta["config"])
            current = int(meta["current"])
            seconds = {str(k): float(v) for k, v in json.loads(meta["seconds"]).items()}
            messages = [str(m) for m in json.loads(meta["messages"])]
            codes, attempted = tensors["codes"], tensors["attempted"]
            adv_idx, adv = tensors["adv_idx"], tensors["adv"]
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user-facing problem
            raise UsageError(
                f"AutoAttack state {path} is not a readable rkd state file ({exc}); delete it"
            ) from None
        differs = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        if differs:
            raise UsageError(
                f"AutoAttack state {path} was made for another run (differs in: {', '.join(differs)}); "
                "delete it or pass another state_path"
            )
        x_adv[adv_idx.to(x_adv.device)] = adv.to(x_adv.device, x_adv.dtype)
        return cls(saved, codes, attempted, current, seconds, messages)


