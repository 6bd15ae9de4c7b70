"""Streaming an image folder from disk: decode on the fly in DataLoader workers, for camera-sized images.

:class:`FolderImages` is a training split as a list of files (nothing decoded up front); :class:`StreamLoader`
batches it with the interface of :class:`~rkd.data.loader.BatchLoader` (``set_epoch``, ``batches(start_step)``,
deterministic per ``(seed, epoch)``, rank ``r`` of ``world_size`` taking rows ``r::world_size`` of each global
batch), through a ``torch.utils.data.DataLoader`` with worker processes and pinned memory on CUDA.

Training augmentation is ImageNet's: ``torchvision.transforms.RandomResizedCrop(size)`` (scale (0.08, 1), ratio
(3/4, 4/3), bilinear) then ``RandomHorizontalFlip()``, with each image's parameters drawn from a seed derived
from ``(seed, epoch, index)``, so the batches do not depend on the number of workers and a resumed run sees the
same ones. Without augmentation, images get the evaluation transform (:func:`rkd.data.imagefolder.decode_eval`).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rkd.checks import check_int
from rkd.data.arrays import ImageArrays, IndexLike, as_index
from rkd.data.imagefolder import (
    check_image_size,
    decode_eval,
    decode_samples,
    describe_eval_transform,
    scan_image_folder,
)
from rkd.data.loader import Batch, EpochLoader
from rkd.data.seeds import derive_seed
from rkd.errors import DataError, UsageError

#: RandomResizedCrop's defaults (torchvision): fraction of the area, and aspect ratio, of the crop.
RRC_SCALE: tuple[float, float] = (0.08, 1.0)
RRC_RATIO: tuple[float, float] = (3 / 4, 4 / 3)


def default_num_workers() -> int:
    """DataLoader workers when the recipe gives none: the usable CPUs less one for the training process, 1..8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus - 1))


def describe_train_transform(image_size: int) -> str:
    """The streamed training augmentation in torchvision's terms (recorded with a model)."""
    return f"RandomResizedCrop({image_size}, scale={RRC_SCALE}, ratio=(3/4, 4/3)) + RandomHorizontalFlip()"


def resized_crop_params(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random resized crop, drawn as ``RandomResizedCrop.get_params`` does
    (10 tries of area in ``RRC_SCALE`` and log-uniform ratio in ``RRC_RATIO``, else a central crop)."""
    area = height * width
    log_lo, log_hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(*RRC_SCALE)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(RRC_RATIO):
        w, h = width, int(round(width / min(RRC_RATIO)))
    elif in_ratio > max(RRC_RATIO):
        w, h = int(round(height * max(RRC_RATIO))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def decode_train(file: Path, image_size: int, seed: int) -> np.ndarray:
    """One image as uint8 HWC RGB after RandomResizedCrop(``image_size``) + RandomHorizontalFlip, drawn from
    ``seed``."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    rng = random.Random(seed)
    try:
        with Image.open(file) as im:
            rgb = im.convert("RGB")
            top, left, h, w = resized_crop_params(rgb.width, rgb.height, rng)
            out = TF.resized_crop(rgb, top, left, h, w, [image_size, image_size])
            if rng.random() < 0.5:
                out = TF.hflip(out)
            return np.array(out, dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read image {file}: {e}") from None


@dataclass(eq=False)
class FolderImages:
    """A split of an image folder as files and labels, decoded only when read.

    Attributes:
        files: the image files; ``labels[i]`` is the class of ``files[i]``.
        labels: int64 labels ``(N,)``.
        classes: class names (``classes[k]`` names label ``k``).
        image_size: side of the square the model sees.
        crop_ratio: the evaluation transform (:func:`rkd.data.imagefolder.decode_eval`).
        num_workers: DataLoader worker processes of a :class:`StreamLoader` over it (0: in the main process).
        name: the data set's name, for reports.
    """

    files: list[Path]
    labels: torch.Tensor
    classes: list[str]
    image_size: int
    crop_ratio: float | None = None
    num_workers: int = field(default_factory=default_num_workers)
    name: str = "imagefolder"

    def __post_init__(self) -> None:
        check_image_size(self.image_size, self.crop_ratio)
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64).reshape(-1)
        if len(self.labels) != len(self.files):
            raise DataError(f"{self.name}: {len(self.files)} files but {len(self.labels)} labels")
        check_int("num_workers", self.num_workers, 0)

    @classmethod
    def scan(
        cls, path: str | Path, split: str, *, image_size: int, crop_ratio: float | None = None,
        num_workers: int | None = None, name: str = "imagefolder",
    ) -> FolderImages:
        """The files of one split (:func:`rkd.data.imagefolder.scan_image_folder`); nothing is decoded."""
        check_image_size(image_size, crop_ratio)
        samples, classes = scan_image_folder(path, split)
        return cls(files=[f for f, _ in samples], labels=torch.tensor([k for _, k in samples], dtype=torch.int64),
                   classes=classes, image_size=image_size, crop_ratio=crop_ratio,
                   num_workers=default_num_workers() if num_workers is None else num_workers, name=name)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def y(self) -> torch.Tensor:
        """The labels (as ``ImageArrays.y``)."""
        return self.labels

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``)."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``: the shape a model sees one image as."""
        return 3, self.image_size, self.image_size

    @property
    def transforms(self) -> dict[str, str]:
        """The training and evaluation transforms, as recorded with a model."""
        return {"train": describe_train_transform(self.image_size),
                "eval": describe_eval_transform(self.image_size, self.crop_ratio)}

    def subset(self, indices: IndexLike) -> FolderImages:
        """The rows ``indices`` (int positions, a bool mask or a slice) as a new ``FolderImages``."""
        idx = as_index(indices)
        positions = torch.arange(len(self))[idx].tolist()
        return FolderImages(files=[self.files[i] for i in positions], labels=self.labels[idx].clone(),
                            classes=list(self.classes), image_size=self.image_size, crop_ratio=self.crop_ratio,
                            num_workers=self.num_workers, name=self.name)

    def decode(self, num_workers: int = 0, chunk: int = 64) -> ImageArrays:
        """Every image decoded with the evaluation transform, in memory and in file order (for held-out
        evaluation, and the selected images of an evaluation, calibration or parity set).

        ``num_workers`` > 0 decodes ``chunk`` images at a time in that many DataLoader worker processes; the
        result is the same array as in the main process (0)."""
        if num_workers <= 0 or len(self) <= chunk:
            samples = list(zip(self.files, self.labels.tolist(), strict=True))
            return decode_samples(samples, list(self.classes), image_size=self.image_size,
                                  crop_ratio=self.crop_ratio, name=self.name)
        x = torch.empty((len(self), self.image_size, self.image_size, 3), dtype=torch.uint8)
        steps = [[(i, None) for i in range(s, min(s + chunk, len(self)))] for s in range(0, len(self), chunk)]
        loader = torch.utils.data.DataLoader(_Decoded(self), batch_sampler=steps, num_workers=num_workers,
                                             persistent_workers=False, prefetch_factor=2)
        for rows, (xb, _) in zip(steps, loader, strict=True):
            x[rows[0][0]:rows[-1][0] + 1] = xb
        return ImageArrays(x=x, y=self.labels.clone(), classes=list(self.classes), name=self.name)


class _Decoded(torch.utils.data.Dataset):
    """``dataset[(index, seed)]`` -> ``(uint8 HWC image, label)``; ``seed`` None: the evaluation transform."""

    def __init__(self, data: FolderImages) -> None:
        self.files = data.files
        self.labels = data.labels.tolist()
        self.image_size = data.image_size
        self.crop_ratio = data.crop_ratio

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int | None]) -> tuple[torch.Tensor, int]:
        index, seed = item
        file = self.files[index]
        if seed is None:
            img = decode_eval(file, self.image_size, self.crop_ratio)
        else:
            img = decode_train(file, self.image_size, seed)
        return torch.from_numpy(np.ascontiguousarray(img)), self.labels[index]


class StreamLoader(EpochLoader):
    """Iterable over ``(x, y)`` batches of a :class:`FolderImages`, decoded by DataLoader workers.

    ``x`` is float32 NCHW in [0, 1] on ``device``, ``y`` int64. Same contract as
    :class:`~rkd.data.loader.BatchLoader` (same order for the same ``(seed, epoch)``, global ``batch_size``
    split over ranks, ``set_epoch``/``skip``/``batches(start_step)`` for an exact mid-epoch resume); the
    augmentation is RandomResizedCrop + flip at the folder's ``image_size`` (``augment``), else the
    evaluation transform. Batches cross to a CUDA device from pinned memory, without blocking.
    """

    def __init__(
        self,
        data: FolderImages,
        *,
        batch_size: int,
        device: str | torch.device = "cpu",
        shuffle: bool = True,
        augment: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        num_workers: int | None = None,
    ) -> None:
        self._setup(len(data), data.name, batch_size=batch_size, drop_last=drop_last, rank=rank,
                    world_size=world_size)
        self.data = data
        self._set_options(data.name, data.classes, device=device, shuffle=shuffle, augment=augment, seed=seed,
                          channels_last=channels_last)
        self.num_workers = data.num_workers if num_workers is None else int(num_workers)

    @property
    def num_samples(self) -> int:
        """Number of samples in the data set (all ranks together)."""
        return len(self.data)

    def step_items(self, start_step: int = 0) -> list[list[tuple[int, int | None]]]:
        """This rank's ``(index, augmentation seed)`` lists, one per step from ``start_step`` on."""
        n, b = self.num_samples, self.batch_size
        order = self._epoch_order().tolist()
        steps = []
        for step in range(start_step, len(self)):
            rows = order[step * b + self.rank: min((step + 1) * b, n): self.world_size]
            steps.append([(i, derive_seed("streamloader-augment", self.seed, self._epoch, i) if self.augment
                           else None) for i in rows])
        return steps

    def batches(self, start_step: int = 0) -> Iterator[Batch]:
        """The current epoch's batches from step ``start_step`` on."""
        if not 0 <= start_step <= len(self):
            raise UsageError(f"start_step {start_step} is outside an epoch of {len(self)} steps")
        steps = [s for s in self.step_items(start_step) if s]
        if not steps:
            return
        cuda = self.device.type == "cuda"
        loader = torch.utils.data.DataLoader(
            _Decoded(self.data), batch_sampler=steps, num_workers=self.num_workers, pin_memory=cuda,
            persistent_workers=False, prefetch_factor=4 if self.num_workers else None,
        )
        for xb, yb in loader:
            xb = xb.to(self.device, non_blocking=cuda)
            yb = yb.to(self.device, non_blocking=cuda)
            yield self._to_float(xb), yb
