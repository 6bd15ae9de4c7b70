"""Helpers shared by the benchmark scripts: the machine a measurement ran on, the command that ran it, the
fields a report starts with, writing it (JSON and Markdown, atomically with :func:`rkd.atomic.atomic_write_text`),
and the parser, thread settings and log of the step benchmarks.

A script in this folder imports it as ``import _common`` (a script's own folder is first on ``sys.path``); the
comparison harness reaches it as ``benchmarks._common``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
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


def write_report(out: Path, report: dict[str, Any], markdown_text: str, *, indent: int = 2,
                 allow_nan: bool = True) -> None:
    """Write ``report`` as JSON to ``out`` and ``markdown_text`` beside it (``.md``), creating the folder; each
    file is replaced whole or not at all. ``allow_nan`` False refuses NaN and infinities (``json.dumps``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(report, indent=indent, allow_nan=allow_nan) + "\n")
    atomic_write_text(out.with_suffix(".md"), markdown_text)


def command_line() -> str:
    """The command as run: thread variables, interpreter (relative to the working directory), argv."""
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ)
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(Path.cwd())
    return " ".join(filter(None, [env, shlex.join([str(exe), *sys.argv])]))


def report_header(benchmark: str, env: Sequence[str] = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")) -> dict[str, Any]:
    """The fields a step benchmark's report starts with: its name, the UTC date, the machine, torch's version and
    threads, the environment variables ``env`` and the command line."""
    import torch

    return {
        "benchmark": benchmark,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "env": {k: os.environ.get(k) for k in env},
        "command": command_line(),
    }


def report_parser(doc: str, default_out: str) -> argparse.ArgumentParser:
    """A script's argument parser: the first paragraph of its docstring ``doc`` as the description, the defaults
    shown, and ``--out`` (the JSON report, ``default_out`` unless given; the Markdown summary goes beside it)."""
    p = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path(default_out),
        help="JSON report; the Markdown summary goes beside it (.md)",
    )
    return p


def pin_threads(threads: int) -> None:
    """torch's intra-op threads to ``threads``, its inter-op threads to 1 (where torch still allows it)."""
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def stderr_log(t0: float) -> Callable[[str], None]:
    """A log to stderr, each line stamped with the seconds since ``t0`` (a ``time.perf_counter()`` reading)."""

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    return log
