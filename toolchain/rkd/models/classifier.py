"""The model wrapper every rkd stage passes around: input normalisation inside, logits out.

A :class:`Classifier` takes float NCHW images in [0, 1] and returns logits, so attacks, ONNX export and the
deployed engine all see the same input range (the convention of RobustBench and AutoAttack). Architectures
register a factory in :data:`MODELS`; :func:`create_model` builds one by name (timm's ``create_model``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from rkd.errors import CheckpointError, UsageError
from rkd.registry import Registry, did_you_mean

CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Architecture factories: ``factory(num_classes=..., **knobs) -> nn.Module``. The knobs a factory takes
#: (``width``, ``depth``, ``widen_factor``) are read from its signature.
MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

_KNOBS = ("width", "depth", "widen_factor")

# Architectures whose default normalisation does not follow the number of classes (the ImageNet forms).
_MODEL_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {}


def register_default_stats(name: str, mean: Sequence[float], std: Sequence[float]) -> None:
    """Make ``(mean, std)`` the default normalisation of architecture ``name`` for any number of classes."""
    _MODEL_STATS[name] = (tuple(float(v) for v in mean), tuple(float(v) for v in std))


def registered_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The default ``(mean, std)`` registered for architecture ``name`` (:func:`register_default_stats`), or None."""
    return _MODEL_STATS.get(name)


def default_stats(num_classes: int, name: str | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Default (mean, std): the architecture's own (ImageNet for the ``tv_*`` forms), else CIFAR-10 for 10
    classes, CIFAR-100 for 100, ImageNet otherwise."""
    if name is not None and name in _MODEL_STATS:
        return _MODEL_STATS[name]
    if num_classes == 10:
        return CIFAR10_MEAN, CIFAR10_STD
    if num_classes == 100:
        return CIFAR100_MEAN, CIFAR100_STD
    return IMAGENET_MEAN, IMAGENET_STD


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` with the statistics stored as buffers of shape (1, C, 1, 1).

    The buffers are persistent, so a checkpoint carries its own normalisation and an exported ONNX graph
    takes raw [0, 1] pixels.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or len(mean) == 0:
            raise UsageError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        if any(not math.isfinite(float(s)) or float(s) <= 0 for s in std):
            raise UsageError(f"std must be finite and > 0 for every channel, got {tuple(std)}")
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a float NCHW batch."""
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        mean = ", ".join(f"{v:.4f}" for v in self.mean.flatten().tolist())
        std = ", ".join(f"{v:.4f}" for v in self.std.flatten().tolist())
        return f"mean=({mean}), std=({std})"


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a :class:`Classifier` (stored in a checkpoint's JSON sidecar).

    ``mean``/``std`` left as None resolve to :func:`default_stats` of ``num_classes`` and ``name``.
    """

    name: str
    num_classes: int
    width: float = 1.0
    depth: int | None = None
    widen_factor: int | None = None
    mean: tuple[float, ...] = None  # type: ignore[assignment]  # resolved in __post_init__
    std: tuple[float, ...] = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        dmean, dstd = default_stats(self.num_classes, self.name)
        mean = dmean if self.mean is None else tuple(float(v) for v in self.mean)
        std = dstd if self.std is None else tuple(float(v) for v in self.std)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "width", float(self.width))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise CheckpointError."""
        if not isinstance(data, Mapping):
            raise CheckpointError(f"model spec must be a JSON object, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            key = unknown[0]
            raise CheckpointError(
                f"unknown key '{key}' in model spec{did_you_mean(key, known)}; "
                f"allowed keys: {', '.join(known)} (was it written by a newer rkd?)"
            )
        missing = [k for k in ("name", "num_classes") if k not in data]
        if missing:
            raise CheckpointError(f"model spec lacks required key(s): {', '.join(missing)}")
        try:
            return cls(**dict(data))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"invalid model spec {dict(data)}: {exc}") from None


class Classifier(nn.Module):
    """``net(normalize(x))``: float NCHW in [0, 1] -> logits of shape (N, num_classes).

    Attributes:
        normalize: the :class:`Normalize` layer (dataset statistics as buffers).
        net: the bare architecture, whose state_dict keys match the published CIFAR code.
        spec: the :class:`ModelSpec` it was built from.
    """

    def __init__(self, net: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.normalize = Normalize(spec.mean, spec.std)
        self.net = net

    @property
    def num_classes(self) -> int:
        """Number of output logits."""
        return self.spec.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a float NCHW batch in [0, 1]."""
        return self.net(self.normalize(x))


def _factory_knobs(factory: Callable[..., nn.Module]) -> dict[str, Any]:
    """The knobs (with their defaults) that an architecture factory accepts."""
    params = inspect.signature(factory).parameters
    return {k: params[k].default for k in _KNOBS if k in params}


def create_model(
    name: str,
    *,
    num_classes: int = 10,
    width: float = 1.0,
    depth: int | None = None,
    widen_factor: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Classifier:
    """Build a registered architecture wrapped in a :class:`Classifier`.

    Args:
        name: a name from :func:`list_models`.
        num_classes: number of classes (>= 2).
        width: channel multiplier (resnet18, preact_resnet18, mobilenet_v2, the ``tv_*`` forms); must be 1.0
            for others.
        depth: network depth, for the models that take one (wide_resnet).
        widen_factor: WideResNet widening factor (wide_resnet).
        mean: per-channel mean; default ImageNet stats for the ``tv_*`` forms, else CIFAR-10 stats for 10
            classes, CIFAR-100 for 100, else ImageNet.
        std: per-channel std, defaulting like ``mean``.

    Raises:
        UsageError: unknown name (with a did-you-mean), a knob the model does not take, or a bad value.
    """
    factory = MODELS.get(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise UsageError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    valid_width = isinstance(width, (int, float)) and not isinstance(width, bool)
    if not (valid_width and math.isfinite(width) and width > 0):
        raise UsageError(f"width must be a finite number > 0, got {width!r}")
    if (mean is None) != (std is None):
        raise UsageError("give both mean and std, or neither (to use the dataset defaults)")
    if mean is not None and std is not None and (len(mean) != 3 or len(std) != 3):
        raise UsageError(f"mean and std need 3 values (RGB), got {len(mean)} and {len(std)}")

    takes = _factory_knobs(factory)
    given: dict[str, Any] = {"width": float(width), "depth": depth, "widen_factor": widen_factor}
    unset: dict[str, Any] = {"width": 1.0, "depth": None, "widen_factor": None}
    kwargs: dict[str, Any] = {}
    for knob in _KNOBS:
        if knob in takes:
            kwargs[knob] = takes[knob] if given[knob] is None else given[knob]
        elif given[knob] != unset[knob]:
            hint = " (use widen_factor to widen it)" if knob == "width" and "widen_factor" in takes else ""
            accepted = ", ".join(takes) or "none"
            raise UsageError(
                f"model '{name}' does not take {knob}={given[knob]!r}{hint}; its knobs: {accepted}"
            )
    for knob in ("depth", "widen_factor"):
        value = kwargs.get(knob)
        if knob in kwargs and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"{knob} must be a positive integer, got {value!r}")

    spec = ModelSpec(
        name=name,
        num_classes=num_classes,
        width=kwargs.get("width", 1.0),
        depth=kwargs.get("depth"),
        widen_factor=kwargs.get("widen_factor"),
        mean=None if mean is None else tuple(float(v) for v in mean),
        std=None if std is None else tuple(float(v) for v in std),
    )
    net = factory(num_classes=num_classes, **kwargs)
    return Classifier(net, spec)


def list_models() -> list[str]:
    """Names of the registered architectures, sorted."""
    return MODELS.names()
