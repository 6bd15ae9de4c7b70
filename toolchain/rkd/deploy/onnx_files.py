"""The files an ONNX model is made of: the ``.onnx`` file and, for a model saved with external data (ONNX's
format for weights over 2 GB, or any model saved with ``save_as_external_data``), the data files its tensors
name. A fingerprint of the model must cover both, or new weights beside an unchanged graph look like the same
model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rkd.atomic import file_sha256
from rkd.errors import CheckpointError


def _tensors(graph: Any) -> Iterator[Any]:
    """Every tensor of ``graph``: initializers and tensor attributes, in subgraphs too."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def external_data_files(path: str | Path) -> list[str]:
    """The external data files ``path``'s tensors name (relative to its folder, sorted; empty for a model that
    holds its weights itself).

    Raises:
        CheckpointError: an unreadable model, or a data file that escapes the model's folder or is missing.
    """
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise CheckpointError(
            f"cannot read ONNX file '{path}': {str(exc).splitlines()[0] if str(exc) else exc}") from None
    names = sorted({ExternalDataInfo(t).location for t in _tensors(model.graph) if uses_external_data(t)})
    folder = path.parent.resolve()
    for name in names:
        target = (folder / name).resolve()
        if folder not in target.parents or not target.is_file():
            raise CheckpointError(f"'{path.name}' keeps weights in external data file {name!r}, which is "
                                  f"{'missing' if folder in target.parents else 'outside its folder'}: keep the "
                                  "data files beside the model")
    return names


def onnx_fingerprint(path: str | Path) -> dict[str, Any]:
    """``{"sha256", "external_data"}``: the file's own sha256 for a self-contained model; with external data, the
    sha256 of the file's digest together with every data file's (so it changes when either does), and
    ``external_data`` maps each data file to its own digest (empty otherwise)."""
    path = Path(path)
    own = file_sha256(path)
    files = {name: file_sha256(path.parent / name) for name in external_data_files(path)}
    if not files:
        return {"sha256": own, "external_data": {}}
    combined = hashlib.sha256(json.dumps({"model": own, "external_data": files}, sort_keys=True).encode()).hexdigest()
    return {"sha256": combined, "external_data": files}


#: The ONNX ``metadata_props`` key under which rkd records the threat model a model was trained and is judged for.
THREAT_MODEL_KEY = "rkd.threat_model"


def stamp_threat_model(path: str | Path, threat_model: dict[str, Any]) -> None:
    """Record ``{"norm", "eps"}`` in the model file itself (``metadata_props``), so that the file's sha256,
    which the bundle's manifest and every verify report carry, covers it (the manifest's copy is not covered
    by any hash). Rewrites ``path`` in place; for a self-contained model only."""
    import onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != THREAT_MODEL_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key = THREAT_MODEL_KEY
    entry.value = json.dumps({"norm": threat_model.get("norm", "linf"), "eps": float(threat_model["eps"])},
                             sort_keys=True)
    onnx.save_model(model, str(path))


def stamped_threat_model(path: str | Path) -> dict[str, Any] | None:
    """The threat model :func:`stamp_threat_model` recorded in ``path`` (``{"norm", "eps"}``), or None.

    Raises:
        CheckpointError: a stamp that is not a threat model.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == THREAT_MODEL_KEY:
            try:
                value = json.loads(prop.value)
                if not isinstance(value, dict) or value.get("norm") not in ("linf", "l2"):
                    raise ValueError
                return {"norm": value["norm"], "eps": float(value["eps"])}
            except (ValueError, KeyError, TypeError):
                raise CheckpointError(f"'{Path(path).name}' records a damaged threat model ({prop.value[:60]!r}); "
                                      "re-export it") from None
    return None
