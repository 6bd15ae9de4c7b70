"""Resumable verification state: every finished attack's per-sample outcome, saved as it finishes.

``rkd verify --state DIR`` keeps one safetensors file per (model, attack) with the per-sample correctness and
the adversarial examples, plus ``meta.json`` with a fingerprint of everything that decides the numbers
(artifact, surrogate and reference sha256, sample indices, threat model, attacks, seed). A killed run started
again with the same arguments reuses the finished attacks and continues AutoAttack from its own state file
(:func:`rkd.attacks.run_autoattack`), so it reaches the same result. A state made for other settings is refused.
No pickle anywhere: tensors in safetensors, the rest in JSON.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch

from rkd.atomic import atomic_write, atomic_write_text
from rkd.errors import UsageError
from rkd.verify.suite import AttackOutcome

FORMAT = "rkd-verify-state/1"
_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]+")


def fingerprint(settings: dict[str, Any]) -> str:
    """sha256 of the JSON of ``settings`` (sorted keys)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


class VerifyState:
    """A state directory bound to one fingerprint; ``None`` path = an in-memory no-op."""

    def __init__(self, path: str | Path | None, settings: dict[str, Any]) -> None:
        self.path = Path(path) if path is not None else None
        self.key = fingerprint(settings)
        if self.path is None:
            return
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"--state '{self.path}' is a file; give a directory (it is created when missing)")
        meta = self.path / "meta.json"
        if meta.is_file():
            try:
                record = json.loads(meta.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                record = None
            if not isinstance(record, dict) or record.get("format") != FORMAT:
                raise UsageError(f"--state '{self.path}' is not a readable rkd verify state (its meta.json is "
                                 "damaged); delete it or pass another --state directory")
            if record.get("fingerprint") != self.key:
                raise UsageError(
                    f"--state '{self.path}' belongs to a run with other settings (artifact, images, attacks, threat "
                    "model, seed, device or batch size); delete it or pass another --state directory"
                )
        else:
            if self.path.is_dir() and any(self.path.iterdir()):
                raise UsageError(f"--state '{self.path}' holds files but no meta.json, so whose they are is unknown; "
                                 "delete it or pass another --state directory")
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(meta, json.dumps({"format": FORMAT, "fingerprint": self.key,
                                                "settings": settings}, indent=1, default=str) + "\n")

    def _file(self, suite: str, name: str) -> Path:
        assert self.path is not None
        return self.path / f"{_UNSAFE.sub('_', suite)}--{_UNSAFE.sub('_', name)}.safetensors"

    def autoattack_path(self, suite: str) -> Path | None:
        """Where AutoAttack keeps its own state for ``suite`` (None without a state directory)."""
        return None if self.path is None else self.path / f"{_UNSAFE.sub('_', suite)}.autoattack.safetensors"

    def save(self, suite: str, outcome: AttackOutcome) -> None:
        """Write one finished outcome (atomically)."""
        if self.path is None:
            return
        from safetensors.torch import save_file

        tensors = {"correct": outcome.correct.to(torch.uint8).contiguous()}
        if outcome.x_adv is not None:
            tensors["x_adv"] = outcome.x_adv.detach().cpu().float().contiguous()
        meta = {"name": outcome.name, "seconds": json.dumps(outcome.seconds),
                "details": json.dumps(outcome.details, default=str)}
        atomic_write(self._file(suite, outcome.name), lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    def load(self, suite: str, names: list[str]) -> dict[str, AttackOutcome]:
        """The outcomes of ``names`` already saved for ``suite``."""
        if self.path is None:
            return {}
        from safetensors import safe_open

        out: dict[str, AttackOutcome] = {}
        for name in names:
            file = self._file(suite, name)
            if not file.is_file():
                continue
            try:
                with safe_open(str(file), framework="pt") as f:
                    meta = f.metadata() or {}
                    correct = f.get_tensor("correct").bool()
                    x_adv = f.get_tensor("x_adv") if "x_adv" in f.keys() else None
                outcome = AttackOutcome(name, correct, json.loads(meta.get("seconds", "0")),
                                        json.loads(meta.get("details", "{}")), x_adv)
            except Exception as exc:  # noqa: BLE001 - a damaged file, whatever the library raises
                raise UsageError(f"--state file '{file}' is damaged ({type(exc).__name__}); delete the --state "
                                 "directory to start afresh") from None
            out[name] = outcome
        return out
