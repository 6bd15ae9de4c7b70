"""Versioned JSON records (a bundle's manifest, a checkpoint's sidecar): reading one and checking that its
``format_version`` is the one this rkd reads. Every problem is a one-line :class:`~rkd.errors.CheckpointError`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rkd.errors import CheckpointError


def read_record(path: Path, *, fix: str, what: str = "") -> Any:
    """The JSON value in ``path``; not JSON (or not UTF-8) is an error naming ``what`` and ``fix``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{what + ' ' if what else ''}'{path}' is not valid JSON ({exc}); {fix}") from None


def check_format_version(record: dict[str, Any], path: Path, *, reads: int, fix: str) -> None:
    """Refuse a record whose ``format_version`` is not ``reads``: a newer one asks to upgrade rkd, an older or
    malformed one to ``fix`` it (e.g. re-export the bundle)."""
    version = record.get("format_version")
    if version != reads:
        newer = isinstance(version, int) and version > reads
        raise CheckpointError(f"'{path}' has format_version {version!r}, this rkd reads {reads}; "
                              f"{'upgrade rkd' if newer else fix}")
