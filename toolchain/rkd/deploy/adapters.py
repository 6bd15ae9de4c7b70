"""Adapters between rkd's model convention and a model rkd did not make.

rkd's own models take float NCHW RGB images in [0, 1] (their normalisation is inside the model) and give one
logit per class of their data set. A model from elsewhere may want another input (pixel values in [0, 255],
ImageNet mean/std, BGR channels, NHWC layout) and may score other classes (an ImageNet model checked on a
10-class folder). :class:`Preprocessing` states the input side once; :class:`AdaptedModule` and
:class:`AdaptedRuntime` apply it, and an optional selection of output columns (a label map), around a torch
module or an rkd :class:`~rkd.deploy.runtime.Runtime`.

The attacks never see the adaptation: they perturb the [0, 1] RGB NCHW image, so eps keeps its meaning in
8-bit pixel units (k/255) whatever the model expects, and the same adaptation runs in front of the engine,
its gradient surrogate and the float reference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rkd.deploy.runtime import Runtime
from rkd.errors import UsageError

LAYOUTS = ("nchw", "nhwc")
CHANNEL_ORDERS = ("rgb", "bgr")
#: torchvision's and timm's ImageNet statistics, on [0, 1] pixels in RGB order.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_NAMED_STATS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD)}


@dataclass(frozen=True)
class Preprocessing:
    """What a model wants in place of a [0, 1] RGB NCHW image ``x``: ``((x[channels] * scale) - mean) / std``
    in ``layout``.

    ``mean`` and ``std`` are in the model's channel order and pixel units (after ``scale``): ImageNet's
    statistics are ``(0.485, 0.456, 0.406)`` / ``(0.229, 0.224, 0.225)`` at scale 1, and
    ``(123.675, 116.28, 103.53)`` / ``(58.395, 57.12, 57.375)`` at scale 255.
    """

    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: str = "nchw"
    channels: str = "rgb"

    def __post_init__(self) -> None:
        if not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale) and self.scale > 0):
            raise UsageError(f"--pixel-scale must be a positive number (1 for [0, 1] inputs, 255 for [0, 255]), "
                             f"got {self.scale!r}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                raise UsageError(f"--{name} needs three finite numbers (one per channel), got {values!r}")
        if not all(v > 0 for v in self.std):
            raise UsageError(f"--std values must be positive, got {self.std!r}")
        if self.layout not in LAYOUTS:
            raise UsageError(f"--layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.channels not in CHANNEL_ORDERS:
            raise UsageError(f"--channels must be one of {', '.join(CHANNEL_ORDERS)}, got {self.channels!r}")

    @property
    def is_identity(self) -> bool:
        """True when the model takes rkd's own input as it is."""
        return self == Preprocessing()

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The model's input for float RGB NCHW images ``x`` in [0, 1] (differentiable)."""
        if self.channels == "bgr":
            x = x.flip(1)
        if self.scale != 1.0:
            x = x * self.scale
        if self.mean != (0.0, 0.0, 0.0) or self.std != (1.0, 1.0, 1.0):
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        if self.layout == "nhwc":
            x = x.permute(0, 2, 3, 1).contiguous()
        return x

    def declared_as_nchw(self, shape: Sequence[int | None] | None) -> tuple[int | None, ...] | None:
        """A model's declared input shape in rkd's (N, C, H, W) order."""
        if shape is None or len(shape) != 4:
            return None if shape is None else tuple(shape)
        n, a, b, c = shape
        return (n, c, a, b) if self.layout == "nhwc" else (n, a, b, c)

    def record(self) -> dict[str, Any]:
        """The report's (and the resumable state's) record of it."""
        return {"scale": self.scale, "mean": list(self.mean), "std": list(self.std), "layout": self.layout,
                "channels": self.channels}

    def describe(self) -> str:
        """One line, e.g. ``BGR, x*255, mean (103.5, 116.3, 123.7), std (57.4, 57.1, 58.4), NHWC``."""
        parts = [self.channels.upper()] + ([f"x*{self.scale:g}"] if self.scale != 1.0 else [])
        if self.mean != (0.0, 0.0, 0.0) or self.std != (1.0, 1.0, 1.0):
            parts += [f"mean ({', '.join(f'{v:.4g}' for v in self.mean)})",
                      f"std ({', '.join(f'{v:.4g}' for v in self.std)})"]
        return ", ".join(parts + [self.layout.upper()])


def _three(text: str, option: str, scale: float, which: int) -> tuple[float, float, float]:
    named = _NAMED_STATS.get(text.strip().lower())
    if named is not None:
        return tuple(v * scale for v in named[which])  # type: ignore[return-value]
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise UsageError(f"{option} '{text}': give three comma-separated numbers (e.g. 0.485,0.456,0.406) or "
                         "'imagenet'") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise UsageError(f"{option} '{text}': give one or three numbers, got {len(values)}")
    return values  # type: ignore[return-value]


def parse_preprocessing(*, mean: str | None = None, std: str | None = None, scale: float | None = None,
                        layout: str | None = None, channels: str | None = None) -> Preprocessing | None:
    """The command line's ``--mean/--std/--pixel-scale/--layout/--channels`` as a :class:`Preprocessing`, or None
    when none was given. ``imagenet`` for mean or std means ImageNet's statistics in the given pixel scale.

    Raises:
        UsageError: a malformed or impossible value, or a mean without a std (or the reverse).
    """
    if all(v is None for v in (mean, std, scale, layout, channels)):
        return None
    if (mean is None) != (std is None):
        raise UsageError("--mean and --std go together: give both (e.g. --mean imagenet --std imagenet)")
    s = 1.0 if scale is None else float(scale)
    return Preprocessing(
        scale=s,
        mean=_three(mean, "--mean", s, 0) if mean is not None else (0.0, 0.0, 0.0),
        std=_three(std, "--std", s, 1) if std is not None else (1.0, 1.0, 1.0),
        layout=(layout or "nchw").lower(), channels=(channels or "rgb").lower(),
    )


def read_label_map(path: str | Path, classes: Sequence[str], num_outputs: int) -> list[int]:
    """For each class of the data set, in order, the model output that scores it, from a JSON file mapping class
    names to output indices (``{"tench": 0, "goldfish": 1, ...}``).

    Raises:
        UsageError: an unreadable file, a class of the data set it does not map, a name the data set lacks, an
            index outside the model's outputs, or two classes on one output.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"--label-map '{path}': cannot read it as JSON ({exc})") from None
    if not isinstance(raw, Mapping) or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw.values()):
        raise UsageError(f"--label-map '{path}': expected a JSON object of class name -> output index")
    unknown = sorted(set(raw) - set(classes))
    if unknown:
        raise UsageError(f"--label-map '{path}' names classes the data set lacks: {', '.join(unknown[:5])}")
    missing = [c for c in classes if c not in raw]
    if missing:
        raise UsageError(f"--label-map '{path}' maps no output to {len(missing)} class(es) of the data set "
                         f"({', '.join(missing[:5])}): map every class")
    idx = [int(raw[c]) for c in classes]
    bad = [i for i in idx if not 0 <= i < num_outputs]
    if bad:
        raise UsageError(f"--label-map '{path}': output index {bad[0]} is outside the model's {num_outputs} outputs")
    if len(set(idx)) != len(idx):
        raise UsageError(f"--label-map '{path}' maps two classes to one output")
    return idx


class AdaptedModule(nn.Module):
    """``module`` behind :class:`Preprocessing` (input side) and a selection of its output columns."""

    def __init__(self, module: nn.Module, preprocessing: Preprocessing | None = None,
                 outputs: Sequence[int] | None = None) -> None:
        super().__init__()
        self.module = module
        self.preprocessing = preprocessing
        self.register_buffer("outputs", torch.tensor(list(outputs), dtype=torch.long) if outputs is not None
                             else None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the data set's classes for [0, 1] RGB NCHW images."""
        logits = self.module(self.preprocessing.apply(x) if self.preprocessing is not None else x)
        return logits if self.outputs is None else logits.index_select(1, self.outputs.to(logits.device))


class AdaptedRuntime(Runtime):
    """An rkd :class:`~rkd.deploy.runtime.Runtime` behind :class:`Preprocessing` and a selection of its outputs;
    it takes rkd's [0, 1] RGB NCHW images like every runtime, and describes itself as the runtime it wraps."""

    def __init__(self, runtime: Runtime, preprocessing: Preprocessing | None = None,
                 outputs: Sequence[int] | None = None) -> None:
        self.inner = runtime
        self.preprocessing = preprocessing
        self.outputs = torch.tensor(list(outputs), dtype=torch.long) if outputs is not None else None
        self.name = runtime.name  # type: ignore[misc]
        self.batch_size = runtime.batch_size
        declared = runtime.input_shape
        self.input_shape = preprocessing.declared_as_nchw(declared) if preprocessing is not None else declared

    def __getattr__(self, name: str) -> Any:  # sha256, metadata, path, ... of the wrapped runtime
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner._predict_batch(self.preprocessing.apply(x) if self.preprocessing is not None else x)
        return logits if self.outputs is None else logits.index_select(1, self.outputs.to(logits.device))

    def describe(self) -> dict[str, Any]:  # noqa: D102
        out = dict(self.inner.describe())
        if self.preprocessing is not None:
            out["preprocessing"] = self.preprocessing.record()
        if self.outputs is not None:
            out["outputs"] = f"{len(self.outputs)} of the model's outputs, by --label-map"
        return out
