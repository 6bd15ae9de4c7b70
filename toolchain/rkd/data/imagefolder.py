"""Image folders in torchvision's ``ImageFolder`` layout (``ROOT/[train|test]/CLASS/IMAGE``) read into memory.

Meant for data sets that fit in memory as uint8 at the model's resolution (N x S x S x 3 bytes: 100,000
images at 32x32 are 300 MB); every image is decoded once, converted to RGB and resized, up front. Larger
folders and camera resolutions are streamed from disk instead (:mod:`rkd.data.stream`); both share the
folder scan and the evaluation transform defined here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from rkd.data.arrays import ImageArrays
from rkd.errors import DataError, UsageError

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
)
SPLITS: tuple[str, ...] = ("train", "test")


#: The evaluation crop ratio of the ImageNet recipe (torchvision's reference scripts, timm's ``crop_pct``):
#: resize the shorter side to ``int(size / 0.875)`` (256 for 224, 109 for 96), then center-crop ``size``.
EVAL_CROP_RATIO = 0.875


def default_crop_ratio(image_size: int) -> float | None:
    """The evaluation crop ratio of an image folder when none is given: :data:`EVAL_CROP_RATIO` above 64 px
    (ImageNet-form inputs), else None (a plain resize to the square, as CIFAR-sized images are used)."""
    return EVAL_CROP_RATIO if image_size > 64 else None


def eval_resize(image_size: int, crop_ratio: float) -> int:
    """The shorter side an image is resized to before its ``image_size`` center crop: ``int(size / ratio)``."""
    return int(image_size / crop_ratio)


def describe_eval_transform(image_size: int, crop_ratio: float | None) -> str:
    """The evaluation transform in torchvision's terms (recorded with a model)."""
    if crop_ratio is None:
        return f"Resize(({image_size}, {image_size}))"
    return f"Resize({eval_resize(image_size, crop_ratio)}) + CenterCrop({image_size})"


def decode_eval(file: Path, image_size: int, crop_ratio: float | None) -> np.ndarray:
    """One image as uint8 HWC RGB after the evaluation transform.

    ``crop_ratio`` None: resized to an ``image_size`` square (bilinear, antialiased as PIL always is); else
    ``torchvision.transforms.Resize(int(image_size / crop_ratio))`` (shorter side, bilinear, antialiased) and
    ``CenterCrop(image_size)``.

    Raises:
        DataError: the file cannot be read as an image.
    """
    from PIL import Image

    try:
        with Image.open(file) as im:
            rgb = im.convert("RGB")
            if crop_ratio is None:
                if rgb.size != (image_size, image_size):
                    rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
            else:
                from torchvision.transforms import functional as TF

                rgb = TF.center_crop(TF.resize(rgb, eval_resize(image_size, crop_ratio)), [image_size, image_size])
            return np.array(rgb, dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read image {file}: {e}") from None


def check_image_size(image_size: object, crop_ratio: object = None) -> None:
    """UsageError unless ``image_size`` is a positive integer and ``crop_ratio`` None or in (0, 1]."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise UsageError(f"imagefolder image_size must be a positive integer, got {image_size!r}")
    if crop_ratio is not None and (isinstance(crop_ratio, bool) or not isinstance(crop_ratio, (int, float))
                                   or not 0 < crop_ratio <= 1):
        raise UsageError(f"imagefolder crop_ratio must be in (0, 1] (0.875: 224 from 256), got {crop_ratio!r}")


def scan_image_folder(path: str | Path, split: str) -> tuple[list[tuple[Path, int]], list[str]]:
    """``(samples, classes)`` of one split of an ImageFolder-style tree: ``(file, label)`` pairs in class and
    file-name order, and the class names.

    ``path`` either holds ``train/`` and ``test/`` (each with one sub-folder per class), or is itself a
    folder of class sub-folders used for whichever split is asked. Class names are the sorted sub-folder
    names of ``train/`` (so labels agree between splits even when ``test/`` lacks a class), as
    ``torchvision.datasets.ImageFolder`` sorts them.

    Raises:
        DataError: missing folder, no class folders or images, a test class unknown to train.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(
            f"image folder not found: {root} (expected ROOT/train/CLASS/IMAGE, ROOT/test/CLASS/IMAGE)"
        )
    if (root / split).is_dir():
        folder = root / split
        names_from = root / "train" if (root / "train").is_dir() else folder
    else:
        present = [s for s in SPLITS if (root / s).is_dir()]
        if present:
            raise DataError(f"{root} has {'/, '.join(present)}/ but no {split}/ folder")
        folder = names_from = root
    classes = _class_dirs(names_from)
    if not classes:
        raise DataError(f"no class folders in {names_from} (expected one sub-folder of images per class)")
    unknown = sorted(set(_class_dirs(folder)) - set(classes))
    if unknown:
        raise DataError(f"{folder} has class folder(s) {', '.join(unknown)} that {names_from} lacks")
    samples = [(f, k) for k, c in enumerate(classes) if (folder / c).is_dir() for f in _images(folder / c)]
    if not samples:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
    return samples, classes


def decode_samples(
    samples: list[tuple[Path, int]], classes: list[str], *, image_size: int, crop_ratio: float | None, name: str
) -> ImageArrays:
    """Decode ``samples`` with the evaluation transform (:func:`decode_eval`) into one ``ImageArrays``."""
    x = np.empty((len(samples), image_size, image_size, 3), dtype=np.uint8)
    for i, (file, _) in enumerate(samples):
        x[i] = decode_eval(file, image_size, crop_ratio)
    y = torch.tensor([k for _, k in samples], dtype=torch.int64)
    return ImageArrays(x=torch.from_numpy(x), y=y, classes=classes, name=name)


def read_image_folder(
    path: str | Path,
    split: str,
    *,
    image_size: int = 32,
    crop_ratio: float | None = None,
    name: str = "imagefolder",
) -> ImageArrays:
    """Load every image of one split of an ImageFolder-style tree as uint8 NHWC ``image_size``-square.

    The layout and class order are :func:`scan_image_folder`'s; each image is opened with PIL, converted to
    RGB and transformed by :func:`decode_eval` (a plain resize to the square, or with ``crop_ratio`` the
    resize + center crop of the ImageNet evaluation).

    Raises:
        DataError: missing folder, no class folders or images, an unreadable image, a test class unknown
            to train.
    """
    check_image_size(image_size, crop_ratio)
    samples, classes = scan_image_folder(path, split)
    return decode_samples(samples, classes, image_size=image_size, crop_ratio=crop_ratio, name=name)


def _class_dirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        found += [Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return found
