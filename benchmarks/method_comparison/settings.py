"""The harness settings: comparison.yaml (its ``smoke`` section merged under ``--smoke``) and the training
recipe every part starts from (base.yaml with ``--set`` overrides, :func:`rkd.config.apply_overrides`)."""

from __future__ import annotations

import copy
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rkd.config import apply_overrides

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CONFIG = HERE / "comparison.yaml"
SCHEMA_VERSION = 1
ATTACK_LABELS = {"clean": "Clean", "fgsm": "FGSM", "pgd20": "PGD-20", "cw": "CW-inf", "autoattack": "AutoAttack",
                 "transfer": "transfer"}


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in: nested mappings merge, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass
class Settings:
    """comparison.yaml (with its ``smoke`` section merged in under ``--smoke``) and the effective recipe."""

    raw: dict[str, Any]
    smoke: bool

    @classmethod
    def load(cls, path: Path, *, smoke: bool, data_root: str | None = None) -> Settings:
        """Read the settings file; ``smoke`` merges its ``smoke:`` section; ``data_root`` replaces the file's."""
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        smoke_section = raw.pop("smoke", {}) or {}
        if smoke:
            raw = deep_merge(raw, smoke_section)
        if data_root is not None:
            raw["data_root"] = data_root
        return cls(raw=raw, smoke=smoke)

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    @property
    def runs_dir(self) -> Path:
        """Where the parts' run folders go (relative to the repository root)."""
        return Path(self.raw["runs_dir"])

    @property
    def results_dir(self) -> Path:
        """Where the parts' result JSONs and the table go."""
        return Path(self.raw["results_dir"])

    @property
    def recipe_overrides(self) -> list[str]:
        """Overrides applied to base.yaml for every part (the smoke settings)."""
        return list(self.raw.get("recipe_overrides") or [])

    def recipe(self) -> dict[str, Any]:
        """base.yaml with the global overrides applied (what every part starts from)."""
        raw = yaml.safe_load((REPO / self.raw["recipe"]).read_text(encoding="utf-8"))
        return apply_overrides(raw, self.recipe_overrides)

    @property
    def steps(self) -> int:
        """m: the attack steps of every method (base.yaml's student.method.steps)."""
        return int(self.recipe()["student"]["method"]["steps"])

    def fill(self, items: Sequence[str]) -> list[str]:
        """Overrides with ``{steps}`` replaced by m."""
        return [str(item).format(steps=self.steps) for item in items]

    def data_args(self) -> list[str]:
        """``--data-root X`` when the settings name one."""
        return ["--data-root", str(self.raw["data_root"])] if self.raw.get("data_root") else []


def label(name: str) -> str:
    """A column label for an attack name."""
    if name.startswith("cw"):
        return "CW-inf" if name == "cw" else f"CW-inf ({name})"
    return ATTACK_LABELS.get(name, name)


def child_env() -> dict[str, str]:
    """The environment of the rkd subprocesses: OMP_NUM_THREADS passed through (1 when unset)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("COLUMNS", "120")
    return env


def machine() -> dict[str, Any]:
    """The machine and thread settings the harness ran on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "omp_num_threads": child_env()["OMP_NUM_THREADS"],
            "python": platform.python_version(), "platform": platform.platform()}
