"""``import rkd`` stays light: no torch, no CUDA, no optional backends."""

from __future__ import annotations

import subprocess
import sys


def test_import_rkd_does_not_pull_heavy_modules() -> None:
    code = (
        "import sys, rkd, rkd.config, rkd.registry, rkd.errors\n"
        "heavy = [m for m in ('torch', 'tensorrt', 'onnxruntime', 'pyautoattack', 'torchvision') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
