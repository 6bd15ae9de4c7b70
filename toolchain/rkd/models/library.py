"""Architectures from model libraries named by a spec: ``timm:NAME`` and ``torchvision:NAME``.

A spec names the architecture of a plain state_dict made outside rkd (``rkd verify --reference FILE
--reference-model timm:resnet18``). The architecture is built without any download (timm's
``create_model(name, pretrained=False, num_classes=N)``, torchvision's ``models.get_model(name, weights=None,
num_classes=N)``) and the file's weights are loaded into it with ``torch.load(weights_only=True)`` (or
safetensors), strictly: missing or unexpected keys are one error naming them. timm is imported only here and
only for a ``timm:`` spec; it is an optional dependency (``pip install timm``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from rkd.errors import CheckpointError, MissingDependencyError, UsageError

#: The libraries a spec may name.
LIBRARIES = ("timm", "torchvision")


class ModelSpec(NamedTuple):
    """A parsed ``[LIBRARY:]NAME[:CLASSES]``: ``library`` None for an rkd-registered architecture."""

    library: str | None
    name: str
    classes: int | None


def parse_model_spec(spec: str, option: str = "--reference-model") -> ModelSpec:
    """``NAME``, ``NAME:CLASSES``, ``timm:NAME``, ``torchvision:NAME`` or either with ``:CLASSES``.

    Raises:
        UsageError: an empty name or CLASSES that is not a positive integer.
    """
    parts = spec.strip().split(":")
    library = parts[0] if len(parts) > 1 and parts[0] in LIBRARIES else None
    rest = parts[1:] if library else parts
    name, extra = rest[0], rest[1:]
    form = "timm:NAME[:CLASSES], torchvision:NAME[:CLASSES] or NAME[:CLASSES]"
    if not name or len(extra) > 1 or (extra and (not extra[0].isdigit() or int(extra[0]) < 1)):
        raise UsageError(f"{option} '{spec}': write {form} (CLASSES a positive integer)")
    return ModelSpec(library, name, int(extra[0]) if extra else None)


def library_model(library: str, name: str, num_classes: int) -> nn.Module:
    """The untrained architecture ``name`` of ``library`` with ``num_classes`` outputs (nothing downloaded).

    Raises:
        MissingDependencyError: timm is not installed. UsageError: the library does not know ``name``.
    """
    if library == "timm":
        try:
            import timm
        except ImportError:
            raise MissingDependencyError(f"timm:{name} needs timm: pip install timm") from None
        if not timm.is_model(name):
            raise UsageError(f"timm has no model '{name}'; list them with python -c \"import timm; "
                             "print(timm.list_models())\"")
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    if library == "torchvision":
        import torchvision

        if name not in torchvision.models.list_models():
            raise UsageError(f"torchvision has no model '{name}'; see torchvision.models.list_models()")
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    raise UsageError(f"unknown model library '{library}': use one of {', '.join(LIBRARIES)}")


def load_library_model(path: str | Path, spec: ModelSpec, num_classes: int, *, mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None, map_location: str | torch.device = "cpu") -> nn.Module:
    """The library architecture of ``spec`` with the state_dict of ``path`` loaded strictly, behind
    ``(x - mean) / std`` when given (inputs then are [0, 1] RGB images), in eval mode.

    Raises:
        CheckpointError: a missing, unreadable or pickled-object file; missing or unexpected keys, or a shape
            mismatch (one line naming them). MissingDependencyError, UsageError: as :func:`library_model`.
    """
    from rkd.models.checkpoint import (
        _check_state_dict,
        _extract_state_dict,
        _read_safetensors,
        _require_file,
        _torch_load_weights_only,
    )
    from rkd.models.classifier import Normalize

    if spec.library is None:
        raise UsageError(f"'{spec.name}' names no library: write timm:{spec.name} or torchvision:{spec.name}")
    path = Path(path)
    _require_file(path)
    net = library_model(spec.library, spec.name, num_classes)
    raw = _read_safetensors(path) if path.suffix == ".safetensors" else _torch_load_weights_only(path, "cpu")
    state = _extract_state_dict(raw, path)
    expected = net.state_dict()
    for key, value in expected.items():  # BatchNorm counters that some writers leave out
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = value
    _check_state_dict(expected, state, path, f"{spec.library}:{spec.name} (num_classes={num_classes})")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # dtype or other load failures that the shape check does not see
        raise CheckpointError(f"cannot load '{path}' into {spec.library}:{spec.name}: "
                              f"{str(exc).strip().splitlines()[0]}") from None
    model: nn.Module = nn.Sequential(Normalize(mean, std), net) if mean is not None and std is not None else net
    return model.to(map_location).eval()


__all__ = ["LIBRARIES", "ModelSpec", "library_model", "load_library_model", "parse_model_spec"]
