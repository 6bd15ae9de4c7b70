"""Deployment: ONNX export, bundles (model files + ``manifest.json``), and runtimes behind one interface.

Modules: :mod:`rkd.deploy.bundle` (the bundle directory and its manifest), :mod:`rkd.deploy.onnx_export`
(torch -> ONNX and parity), :mod:`rkd.deploy.runtimes` (torch / onnxruntime / tensorrt ``Runtime``),
:mod:`rkd.deploy.export` (checkpoint -> bundle). onnx and onnxruntime are imported inside the functions that
use them, and tensorrt only by its own module, so importing this package stays cheap.
"""

from __future__ import annotations

from rkd.deploy.bundle import MANIFEST_NAME, read_manifest, stage_bundle, update_bundle, write_manifest

__all__ = ["MANIFEST_NAME", "read_manifest", "stage_bundle", "update_bundle", "write_manifest"]
