"""The surrogate's files: :func:`save_surrogate` writes an :class:`~rkd.quantize.surrogate.OnnxGraphModule` as
the QDQ graph's raw tensors (int8 weights, scales, zero points) in safetensors plus a JSON sidecar holding the
node list (:func:`sidecar_path`), and :func:`load_surrogate` rebuilds the module from them (sha256-checked; no
pickle).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rkd.atomic import atomic_write, atomic_write_text
from rkd.errors import CheckpointError, UsageError

if TYPE_CHECKING:
    from rkd.quantize.surrogate import OnnxGraphModule

__all__ = ["FORMAT", "FORMAT_VERSION", "KIND", "load_surrogate", "save_surrogate", "sidecar_path"]

FORMAT = "rkd-surrogate"
FORMAT_VERSION = 1
KIND = "onnx-qdq-interpreter"


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar of a surrogate ``.safetensors`` file (same stem, ``.json``)."""
    return Path(path).with_suffix(".json")


_SAFE_KEY = re.compile(r"^[^\x00]+$")


def save_surrogate(module: OnnxGraphModule, path: str | Path) -> Path:
    """Write ``module`` as ``path`` (safetensors: the graph's raw tensors) plus its JSON sidecar (the nodes).

    Both files are written atomically, the weights first; the sidecar records the weights' sha256.

    Raises:
        UsageError: not an :class:`OnnxGraphModule`, or a path not ending in ``.safetensors``.
    """
    from safetensors.torch import save_file

    from rkd.deploy.bundle import file_sha256
    from rkd.quantize.surrogate import OnnxGraphModule

    if not isinstance(module, OnnxGraphModule):
        raise UsageError(
            f"save_surrogate needs an OnnxGraphModule (build_surrogate), got {type(module).__name__}"
        )
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UsageError(f"surrogate path must end in .safetensors, got '{path}'")
    bad = [k for k in module.raw if not _SAFE_KEY.match(k)]
    if bad:
        raise UsageError(f"surrogate tensor name {bad[0]!r} cannot be stored")
    tensors = {k: v.contiguous().clone() for k, v in module.raw.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": FORMAT}))
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": KIND, "graph": module.spec,
              "source": module.source, "weights": path.name, "sha256": file_sha256(path)}
    atomic_write_text(sidecar_path(path), json.dumps(record, indent=1) + "\n")
    return path


def load_surrogate(path: str | Path, *, map_location: str | torch.device = "cpu") -> OnnxGraphModule:
    """Load a surrogate written by :func:`save_surrogate` (sha256-checked; safetensors, never pickle).

    Raises:
        CheckpointError: a missing or foreign file or sidecar, a sha256 mismatch, a corrupt file.
    """
    from safetensors.torch import load_file

    from rkd.deploy.bundle import file_sha256
    from rkd.quantize.surrogate import OnnxGraphModule

    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file() or not side.is_file():
        missing = path if not path.is_file() else side
        raise CheckpointError(f"surrogate file missing: '{missing}' (rkd quantize writes both files)")
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"surrogate sidecar '{side}' is not valid JSON ({exc}); rerun rkd quantize"
        ) from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("kind") != KIND:
        raise CheckpointError(f"'{side}' is not an rkd surrogate sidecar (expected \"format\": \"{FORMAT}\")")
    if record.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"'{side}' has format_version {record.get('format_version')!r}, this rkd reads {FORMAT_VERSION}; "
            "rerun rkd quantize (or upgrade rkd)"
        )
    actual = file_sha256(path)
    if actual != record.get("sha256"):
        raise CheckpointError(f"sha256 mismatch for surrogate '{path}': the file changed since it was saved; "
                              "rerun rkd quantize")
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:  # SafetensorError
        raise CheckpointError(f"cannot read surrogate '{path}': {str(exc).splitlines()[0]}") from None
    module = OnnxGraphModule(record["graph"], tensors, source=record.get("source"))
    return module.to(map_location).eval()
