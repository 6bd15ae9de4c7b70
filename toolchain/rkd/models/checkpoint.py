"""Checkpoints: safetensors + JSON sidecar, written atomically; foreign state_dicts, never unpickled.

An rkd checkpoint is two files with one stem::

    student.safetensors   the full Classifier state_dict (normalize.* and net.*), CPU, contiguous
    student.json          {"format": "rkd-checkpoint", "format_version": 1, "model": ModelSpec.to_dict(),
                           "metadata": {...}, "sha256": "<sha256 of student.safetensors>"}

Foreign checkpoints (the plain ``torch.save(model.state_dict())`` files of ARD, RSLAD, TRADES, fast-AT) are
read with ``torch.load(..., weights_only=True)`` only (DESIGN.md: never unpickle user files).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import secrets
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from rkd.atomic import file_sha256, fsync_dir
from rkd.errors import CheckpointError, UsageError
from rkd.models.classifier import Classifier, ModelSpec, Normalize, create_model, registered_stats
from rkd.records import check_format_version, read_record

FORMAT = "rkd-checkpoint"
FORMAT_VERSION = 1

#: Keys under which training scripts commonly nest the state_dict, tried in this order.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net")

_MAX_LISTED = 5


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar of a ``.safetensors`` checkpoint: same stem, suffix ``.json``."""
    return Path(path).with_suffix(".json")


def _temp_path(target: Path) -> Path:
    """A unique hidden temp path next to ``target`` (same directory, so ``os.replace`` is atomic)."""
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(target: Path, write: Callable[[Path], None]) -> Path:
    """Write a temp file next to ``target`` with ``write(tmp)``, fsync it; on failure the temp is removed."""
    tmp = _temp_path(target)
    try:
        write(tmp)
        _fsync_file(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def save_checkpoint(model: Classifier, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Save ``model`` as ``path`` (safetensors) plus its JSON sidecar, both atomically.

    Each file is written to a temp file in the target directory, fsynced, then moved into place with
    ``os.replace``; the weights are moved first, the sidecar second. A failure before the moves leaves no
    target file and no temp file behind.

    Args:
        model: the Classifier to save (any device; weights are copied to CPU and made contiguous).
        path: the weights path; must end in ``.safetensors``. Missing parent directories are created.
        metadata: JSON-serialisable extras for the sidecar (recipe hash, metrics, ...).

    Returns:
        The safetensors path.

    Raises:
        UsageError: wrong suffix, not a Classifier, or metadata that is not JSON-serialisable.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UsageError(f"checkpoint path must end in .safetensors, got '{path}'")
    if not isinstance(model, Classifier):
        raise UsageError(
            f"save_checkpoint needs an rkd Classifier (from create_model), got {type(model).__name__}"
        )
    try:
        json.dumps(metadata or {})
    except (TypeError, ValueError) as exc:
        raise UsageError(f"checkpoint metadata is not JSON-serialisable: {exc}") from None

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    spec = model.spec.to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = sidecar_path(path)

    weights_tmp = _write_temp(
        path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": FORMAT, "model": json.dumps(spec)})
    )
    try:
        record = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": spec,
            "metadata": metadata or {},
            "sha256": file_sha256(weights_tmp),
        }
        text = json.dumps(record, indent=2) + "\n"
        sidecar_tmp = _write_temp(sidecar, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except BaseException:
        weights_tmp.unlink(missing_ok=True)
        raise
    try:
        os.replace(weights_tmp, path)
        os.replace(sidecar_tmp, sidecar)
    except BaseException:
        weights_tmp.unlink(missing_ok=True)
        sidecar_tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def _listing(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f", ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return shown + more


def _check_state_dict(
    expected: Mapping[str, torch.Tensor], got: Mapping[str, Any], source: Path, what: str
) -> None:
    """CheckpointError on missing/unexpected keys (up to 5 each, with counts) or the first shape mismatch."""
    missing = sorted(k for k in expected if k not in got)
    unexpected = sorted(k for k in got if k not in expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
        raise CheckpointError(
            f"state_dict in '{source}' does not match {what}: {'; '.join(parts)}; "
            "check the model name and its width/depth/widen_factor"
        )
    for key, ref in expected.items():
        value = got[key]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"entry '{key}' in '{source}' is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != tuple(ref.shape):
            raise CheckpointError(
                f"shape mismatch for '{key}' in '{source}': checkpoint has {tuple(value.shape)}, "
                f"{what} expects {tuple(ref.shape)}; check num_classes and width/depth/widen_factor"
            )


def _require_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: '{path}'; check the path")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: '{path}'")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError and others on corrupt headers
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"cannot read '{path}': corrupt safetensors header or data ({first}); re-save or re-download it"
        ) from None


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> tuple[Classifier, dict]:
    """Load an rkd checkpoint written by :func:`save_checkpoint`.

    The sha256 in the sidecar is checked before the weights are read; the model is rebuilt from the sidecar's
    ModelSpec and loaded strictly.

    Args:
        path: the ``.safetensors`` file (its ``.json`` sidecar must sit next to it).
        map_location: device to put the model on.

    Returns:
        ``(model in eval mode, sidecar dict)``.

    Raises:
        CheckpointError: missing file or sidecar, bad sidecar, sha256 mismatch, corrupt file, key or shape
            mismatch.
    """
    path = Path(path)
    _require_file(path)
    if path.suffix.lower() in (".onnx", ".engine", ".plan"):
        raise CheckpointError(f"'{path}' is an exported model, not a checkpoint: measure it with rkd verify --engine "
                              f"{path} (add --no-gates to only measure)")
    if path.suffix != ".safetensors":
        raise CheckpointError(
            f"'{path}' is not a .safetensors rkd checkpoint; for a plain .pt/.pth state_dict use "
            "load_foreign_checkpoint(path, model=..., num_classes=...) or the CLI's --model option"
        )
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        raise CheckpointError(
            f"checkpoint sidecar missing: '{sidecar}' (save_checkpoint writes it next to the weights); "
            "for a bare .safetensors state_dict use load_foreign_checkpoint or the CLI's --model option"
        )
    record = read_record(sidecar, what="checkpoint sidecar", fix="restore or re-save it")
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(
            f"'{sidecar}' is not an rkd checkpoint sidecar (expected \"format\": \"{FORMAT}\")"
        )
    check_format_version(record, sidecar, reads=FORMAT_VERSION, fix="re-save the checkpoint")
    for key in ("model", "sha256"):
        if key not in record:
            raise CheckpointError(f"checkpoint sidecar '{sidecar}' lacks \"{key}\"; re-save the checkpoint")
    actual = file_sha256(path)
    if actual != record["sha256"]:
        raise CheckpointError(
            f"sha256 mismatch for '{path}': the file changed or is corrupt since it was saved "
            f"(sidecar {str(record['sha256'])[:12]}..., file {actual[:12]}...); restore or re-save it"
        )
    spec = ModelSpec.from_dict(record["model"])
    try:
        model = create_model(
            spec.name,
            num_classes=spec.num_classes,
            width=spec.width,
            depth=spec.depth,
            widen_factor=spec.widen_factor,
            mean=spec.mean,
            std=spec.std,
        )
    except CheckpointError:
        raise
    except UsageError as exc:
        raise CheckpointError(f"checkpoint '{path}' describes a model rkd cannot build: {exc}") from None
    state = _read_safetensors(path)
    _check_state_dict(model.state_dict(), state, path, f"model '{spec.name}' from its sidecar")
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval(), record


def _torch_load_weights_only(path: Path, map_location: str | torch.device) -> Any:
    try:
        with warnings.catch_warnings():  # torch warns about legacy pickles before refusing them: one line is ours
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "refused"
        raise CheckpointError(
            f"'{path}' is not a plain state_dict: weights_only loading refused it ({first}); rkd will not "
            "unpickle arbitrary objects; re-save it with torch.save(model.state_dict(), path) or as "
            ".safetensors"
        ) from None
    except Exception as exc:  # corrupt zip, truncated file, not a torch file at all
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read '{path}' as a torch state_dict ({first}); is it corrupt or truncated?"
        ) from None


#: Prefixes of the wrapped network's keys: rkd's Classifier (``net.``), RobustBench's normalised models (``model.``).
WRAPPER_PREFIXES = ("net.", "model.")
#: The normalisation buffers a wrapped state_dict may carry (rkd's ``Normalize``, RobustBench's ``ImageNormalizer``).
NORMALIZE_KEYS = ("normalize.mean", "normalize.std")


def _extract_state_dict(obj: Any, path: Path) -> dict[str, Any]:
    """The state_dict itself or the one nested under a common key; a 'module.' prefix and then one 'net.' or
    'model.' prefix stripped (DataParallel, rkd's Classifier, RobustBench's ``normalize_model``)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"'{path}' holds a {type(obj).__name__}, not a state_dict (a dict of tensors)")
    for key in STATE_DICT_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner:
            obj = inner
            break
    state: dict[str, Any] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointError(f"'{path}' has a non-string key {key!r}; it is not a state_dict")
        name = key.removeprefix("module.")
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        if name in state:
            raise CheckpointError(f"'{path}' has key '{name}' twice (with and without a prefix)")
        state[name] = value
    return state


def load_foreign_checkpoint(
    path: str | Path,
    *,
    model: str,
    num_classes: int,
    width: float = 1.0,
    depth: int | None = None,
    widen_factor: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    map_location: str | torch.device = "cpu",
) -> Classifier:
    """Load a plain state_dict from the ARD / RSLAD / TRADES / fast-AT code, torchvision or RobustBench into
    ``Classifier.net``.

    Read with ``torch.load(weights_only=True)`` (never plain unpickling), or ``safetensors`` for a
    ``.safetensors`` file. Accepted: the state_dict itself or one nested under ``state_dict``,
    ``model_state_dict``, ``model`` or ``net``; keys with a DataParallel ``module.`` prefix and/or a ``net.`` or
    ``model.`` prefix. A state_dict that carries its normalisation (``normalize.mean`` and ``normalize.std``:
    RobustBench's ``normalize_model`` wrapper of its ImageNet models, or an rkd Classifier) keeps it, in place
    of ``mean``/``std``. Loading is strict, with two documented allowances for the literature's files: TRADES'
    unused ``sub_block1.*`` (wide_resnet) is dropped, and BatchNorm ``num_batches_tracked`` counters missing
    from pre-1.0 PyTorch files keep the model's value.

    Args:
        path: the ``.pt``/``.pth``/``.safetensors`` file.
        model: registered architecture name (see :func:`rkd.models.list_models`).
        num_classes: number of classes of the checkpoint.
        width, depth, widen_factor: architecture knobs, as for :func:`rkd.models.create_model`.
        mean, std: normalisation put in front of the net when the file has none; default identity for the
            CIFAR architectures (these codes feed raw [0, 1] inputs to the network) and the ImageNet statistics
            for the ``tv_*`` forms (torchvision's weights expect ImageNet-normalised inputs).
        map_location: device to put the model on.

    Returns:
        The Classifier in eval mode.

    Raises:
        CheckpointError: missing/unreadable file, a pickle with arbitrary objects, key or shape mismatch.
        UsageError: unknown model name or knob.
    """
    path = Path(path)
    _require_file(path)
    if (mean is None) != (std is None):
        raise UsageError("give both mean and std, or neither")
    if mean is None or std is None:
        mean, std = registered_stats(model) or ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    clf = create_model(model, num_classes=num_classes, width=width, depth=depth, widen_factor=widen_factor,
                       mean=mean, std=std)
    if path.suffix == ".safetensors":
        raw: Any = _read_safetensors(path)
    else:
        raw = _torch_load_weights_only(path, map_location)
    state = _extract_state_dict(raw, path)
    carried = [state.pop(k) for k in NORMALIZE_KEYS if k in state]
    if carried:
        clf = _with_normalisation(clf, carried, path)
    if model == "wide_resnet":
        state = {k: v for k, v in state.items() if not k.startswith("sub_block1.")}
    expected = clf.net.state_dict()
    for key, value in expected.items():
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = value
    _check_state_dict(expected, state, path, f"model '{model}' (num_classes={num_classes})")
    clf.net.load_state_dict(state, strict=True)
    return clf.to(map_location).eval()


def _with_normalisation(clf: Classifier, carried: list[Any], path: Path) -> Classifier:
    """``clf`` with the ``normalize.mean``/``normalize.std`` a state_dict carried (3 values each)."""
    if len(carried) != 2 or not all(isinstance(t, torch.Tensor) and t.numel() == 3 for t in carried):
        raise CheckpointError(
            f"'{path}' carries a normalisation that is not normalize.mean and normalize.std with 3 values each"
        )
    mean, std = (tuple(float(v) for v in t.flatten().tolist()) for t in carried)
    try:
        normalize = Normalize(mean, std)
    except UsageError as exc:
        raise CheckpointError(f"'{path}' carries an invalid normalisation: {exc}") from None
    clf.normalize = normalize
    clf.spec = dataclasses.replace(clf.spec, mean=mean, std=std)
    return clf
