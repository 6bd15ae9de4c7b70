"""The code passes the linter the project is configured for (``[tool.ruff]`` in pyproject.toml): ``ruff check``
over the package, the tests, the benchmarks and the docs generator runs in every ``make test``. ruff comes with
the ``dev`` extra; the test skips cleanly where it is missing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECKED = ("toolchain", "tests", "benchmarks", "docs")


def test_ruff_check_is_clean() -> None:
    here = Path(sys.executable).parent / "ruff"
    ruff = str(here) if here.is_file() else shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    res = subprocess.run([ruff, "check", "--no-cache", *CHECKED], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, (f"ruff check found problems (fix them, or `ruff check --fix`):\n"
                                 f"{res.stdout}{res.stderr}")
