"""``ImageArrays``: a whole image data set held in memory as uint8 NHWC plus int64 labels.

Every loader in :mod:`rkd.data.datasets` returns one; :class:`rkd.data.loader.BatchLoader` batches it. Keeping
images as uint8 (3 KiB per CIFAR image) lets a CIFAR-scale set live on the GPU and be augmented there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rkd.errors import DataError

IndexLike = torch.Tensor | np.ndarray | Sequence[int] | slice


def as_index(indices: IndexLike) -> torch.Tensor | slice:
    """``indices`` as a CPU int64 (or bool mask) tensor; slices pass through."""
    if isinstance(indices, slice):
        return indices
    if isinstance(indices, torch.Tensor):
        t = indices.detach().cpu()
    else:
        t = torch.as_tensor(np.asarray(indices))
    if t.dtype != torch.bool:
        t = t.to(torch.int64)
    return t


@dataclass(eq=False)
class ImageArrays:
    """Images and labels of one split of a data set.

    Attributes:
        x: uint8 images, NHWC ``(N, H, W, C)``, contiguous.
        y: int64 labels ``(N,)`` in ``[0, len(classes))``.
        classes: class names; ``classes[k]`` names label ``k``.
        name: the data set's name (``"cifar10"``, ``"npz"``, ...), for reports.
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or not isinstance(self.y, torch.Tensor):
            raise DataError(f"{self.name}: x and y must be torch tensors")
        if self.x.dtype != torch.uint8 or self.x.ndim != 4:
            raise DataError(
                f"{self.name}: images must be uint8 NHWC, got {self.x.dtype} with shape {tuple(self.x.shape)}"
            )
        if self.y.ndim != 1 or len(self.y) != len(self.x):
            raise DataError(
                f"{self.name}: labels must be 1-D with one per image, got shape {tuple(self.y.shape)} "
                f"for {len(self.x)} images"
            )
        self.x = self.x.contiguous()
        self.y = self.y.to(torch.int64).contiguous()
        self.classes = [str(c) for c in self.classes]
        if len(self.y) and (int(self.y.min()) < 0 or int(self.y.max()) >= len(self.classes)):
            raise DataError(
                f"{self.name}: labels must lie in [0, {len(self.classes)}), "
                f"found {int(self.y.min())}..{int(self.y.max())}"
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``)."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``: the shape a model sees one image as."""
        _, h, w, c = self.x.shape
        return int(c), int(h), int(w)

    def subset(self, indices: IndexLike) -> ImageArrays:
        """The rows ``indices`` (int positions, a bool mask or a slice) as a new ``ImageArrays``."""
        idx = _on(as_index(indices), self.x.device)
        return ImageArrays(x=self.x[idx].contiguous(), y=self.y[idx].clone(), classes=list(self.classes),
                           name=self.name)

    def to(self, device: str | torch.device) -> ImageArrays:
        """The same arrays (still uint8) on ``device``."""
        return ImageArrays(x=self.x.to(device), y=self.y.to(device), classes=list(self.classes),
                           name=self.name)

    def to_float(
        self, indices: IndexLike | None = None, device: str | torch.device | None = None
    ) -> torch.Tensor:
        """Images ``indices`` (all when None) as float32 NCHW in [0, 1], contiguous, on ``device``.

        The uint8 rows are moved first and converted on ``device`` (4x less to transfer).
        """
        x = self.x if indices is None else self.x[_on(as_index(indices), self.x.device)]
        if device is not None:
            x = x.to(device)
        return x.permute(0, 3, 1, 2).to(torch.float32).div_(255.0).contiguous()

    def channel_mean_std(self, chunk: int = 4096) -> tuple[list[float], list[float]]:
        """Per-channel mean and standard deviation of the pixels in [0, 1] (float64, chunked)."""
        if len(self) == 0:
            raise DataError(f"{self.name}: no images to compute statistics of")
        c = self.x.shape[-1]
        s = torch.zeros(c, dtype=torch.float64)
        s2 = torch.zeros(c, dtype=torch.float64)
        for start in range(0, len(self), chunk):
            part = self.x[start:start + chunk].reshape(-1, c).to("cpu", torch.float64).div_(255.0)
            s += part.sum(0)
            s2 += part.square().sum(0)
        n = len(self) * self.x.shape[1] * self.x.shape[2]
        mean = s / n
        std = (s2 / n - mean.square()).clamp_min(0).sqrt()
        return mean.tolist(), std.tolist()


def _on(idx: torch.Tensor | slice, device: torch.device) -> torch.Tensor | slice:
    return idx.to(device) if isinstance(idx, torch.Tensor) else idx
