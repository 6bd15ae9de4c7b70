"""The run directory of ``rkd run``: its marker, lock and ``run.json`` record of each stage's key and artifact,
and the stage and run results."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rkd.atomic import atomic_write_text, file_sha256, try_lock
from rkd.errors import UsageError

STAGES = ("teacher", "distill", "export", "quantize", "engine", "verify")
RUN_RECORD = "run.json"
RUN_FORMAT = "rkd-run/1"
RUN_MARKER = ".rkd-run"  # written when rkd run makes (or adopts an empty) run directory
RUN_LOCK = ".run.lock"
#: The folder of each stage that replaces its output when it reruns (export, quantize and engine update the bundle
#: in place, all or nothing).
STAGE_FOLDERS = {"teacher": "teacher", "distill": "student", "verify": "verify"}
PREVIOUS = ".previous"


@dataclass
class StageResult:
    """One stage's outcome: ``status`` is ran, resumed or skipped."""

    name: str
    status: str
    seconds: float
    artifact: str | None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    """The whole run: its directory, every stage, and the verification report (or None)."""

    run_dir: Path
    stages: list[StageResult]
    report: dict[str, Any] | None

    @property
    def exit_code(self) -> int:
        """The verify exit code (:func:`~rkd.verify.report.verdict_exit_code`), 0 without a verify stage."""
        from rkd.verify.report import verdict_exit_code

        return verdict_exit_code(self.report) if self.report is not None else 0


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _dump(section: Any) -> Any:
    return section.model_dump(mode="json") if hasattr(section, "model_dump") else section


def _names(items: list[str], most: int = 3) -> str:
    shown = ", ".join(f"'{i}'" for i in items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def _files(folder: Path) -> list[str]:
    """Every file (and link) under ``folder``, as sorted POSIX paths relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def _check_run_dir(run_dir: Path) -> None:
    """Refuse a run directory ``rkd run`` did not make: it must be new, empty (a stale lock aside), or carry
    :data:`RUN_MARKER` (or a ``run.json`` of this format, written before the marker existed)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out '{run_dir}' is a file; give a folder")
    if not run_dir.is_dir() or (run_dir / RUN_MARKER).is_file() or _Record(run_dir).known:
        return
    held = sorted(p.name for p in run_dir.iterdir() if p.name != RUN_LOCK)
    if held:
        raise UsageError(f"'{run_dir}' was not made by rkd run and is not empty (it holds {_names(held)}): rkd run "
                         "writes and replaces files only in a run folder of its own; choose a new or empty --out")


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    _check_run_dir(run_dir)  # before the lock file, the first thing written
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = try_lock(run_dir / RUN_LOCK)
    if fh is None:
        raise UsageError(f"another rkd run is using '{run_dir}'; wait for it or use another --out")
    try:
        if not (run_dir / RUN_MARKER).is_file():
            atomic_write_text(run_dir / RUN_MARKER, json.dumps({"format": RUN_FORMAT}) + "\n")
        yield
    finally:
        fh.close()


class _Record:
    """``run.json``: per stage ``{"key", "artifact", "sha256", "done", "metrics", "seconds", "files"}`` (``files``:
    what the stage's folder held when it finished), and under ``previous`` the entry of each output kept aside."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / RUN_RECORD
        self.data: dict[str, Any] = {"format": RUN_FORMAT, "stages": {}}
        self.known = False  # whether run.json exists and is rkd run's
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                data = {}
            if isinstance(data, dict) and data.get("format") == RUN_FORMAT and isinstance(data.get("stages"), dict):
                self.data, self.known = data, True

    def _absolute(self, entry: dict[str, Any] | None) -> dict[str, Any]:
        entry = dict(entry or {})
        if entry.get("artifact"):  # stored relative to the run directory, so a moved run still skips
            entry["artifact"] = str(self.run_dir / entry["artifact"])
        return entry

    def _relative(self, entry: dict[str, Any]) -> dict[str, Any]:
        entry = dict(entry)
        if entry.get("artifact"):
            path = Path(entry["artifact"])
            entry["artifact"] = str(path.relative_to(self.run_dir) if path.is_relative_to(self.run_dir) else path)
        return entry

    def _save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=1) + "\n")

    def stage(self, name: str) -> dict[str, Any]:
        return self._absolute(self.data["stages"].get(name))

    def set(self, name: str, entry: dict[str, Any]) -> None:
        self.data["stages"][name] = self._relative(entry)
        self._save()

    def previous(self, name: str) -> dict[str, Any]:
        """The entry of the stage's output kept in ``<folder>.previous`` (empty when none is recorded)."""
        return self._absolute((self.data.get("previous") or {}).get(name))

    def set_previous(self, name: str, entry: dict[str, Any] | None) -> None:
        kept = dict(self.data.get("previous") or {})
        if entry is None:
            if name not in kept:
                return
            kept.pop(name)
        else:
            kept[name] = self._relative(entry)
        self.data["previous"] = kept
        self._save()

    def up_to_date(self, name: str, key: str) -> bool:
        entry = self.stage(name)
        artifact = entry.get("artifact")
        if not entry.get("done") or entry.get("key") != key or not artifact or not Path(artifact).is_file():
            return False
        return file_sha256(artifact) == entry.get("sha256")


def _moved(artifact: str | None, old: Path, new: Path) -> str | None:
    """``artifact``'s path once its folder ``old`` is renamed to ``new``."""
    if not artifact:
        return artifact
    path = Path(artifact)
    return str(new / path.relative_to(old)) if path.is_relative_to(old) else artifact
