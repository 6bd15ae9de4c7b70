"""Helpers shared by the benchmark scripts: the machine a measurement ran on, the command that ran it, and
writing its report (JSON and Markdown, atomically with :func:`rkd.atomic.atomic_write_text`).

A script in this folder imports it as ``import _common`` (a script's own folder is first on ``sys.path``); the
comparison harness reaches it as ``benchmarks._common``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

from rkd.atomic import atomic_write_text


def machine_info() -> dict[str, Any]:
    """The CPU (model and the vector/matrix extensions that decide fp32 vs bf16 vs int8 speed), its logical
    cores, the platform and Python (:func:`rkd.environment.cpu_description`)."""
    from rkd.environment import cpu_description

    cpu = cpu_description()
    return {
        "processor": platform.processor(),
        "cpu_model": cpu["cpu"],
        "cpu_flags": cpu["cpu_extensions"],
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def write_report(out: Path, report: dict[str, Any], markdown_text: str, *, indent: int = 2) -> None:
    """Write ``report`` as JSON to ``out`` and ``markdown_text`` beside it (``.md``), creating the folder; each
    file is replaced whole or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(report, indent=indent) + "\n")
    atomic_write_text(out.with_suffix(".md"), markdown_text)


def command_line() -> str:
    """The command as run: thread variables, interpreter (relative to the working directory), argv."""
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ)
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(Path.cwd())
    return " ".join(filter(None, [env, shlex.join([str(exe), *sys.argv])]))
