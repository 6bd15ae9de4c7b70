"""rkd: robust distillation of mobile image classifiers, INT8 export, and robustness verification of the
artifact that ships.

``import rkd`` is light (no torch); the subpackages load what they need: ``rkd.models``, ``rkd.data``,
``rkd.attacks``, ``rkd.distill``, ``rkd.train``, ``rkd.verify``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rkd")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installation
    __version__ = "0.0.0"
