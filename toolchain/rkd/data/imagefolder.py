"""Image folders in torchvision's ``ImageFolder`` layout (``ROOT/[train|test]/CLASS/IMAGE``) read into memory.

Meant for data sets that fit in memory as uint8 at the model's resolution (N x S x S x 3 bytes: 100,000
images at 32x32 are 300 MB); every image is decoded once, converted to RGB and resized, up front.
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


def read_image_folder(
    path: str | Path, split: str, *, image_size: int = 32, name: str = "imagefolder"
) -> ImageArrays:
    """Load every image of one split of an ImageFolder-style tree as uint8 NHWC ``image_size``-square.

    ``path`` either holds ``train/`` and ``test/`` (each with one sub-folder per class), or is itself a
    folder of class sub-folders used for whichever split is asked. Class names are the sorted sub-folder
    names of ``train/`` (so labels agree between splits even when ``test/`` lacks a class). Images are
    opened with PIL, converted to RGB and resized with bilinear filtering (antialiased, as PIL always is).

    Raises:
        DataError: missing folder, no class folders or images, an unreadable image, a test class unknown
            to train.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise UsageError(f"imagefolder image_size must be a positive integer, got {image_size!r}")
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

    from PIL import Image

    x = np.empty((len(samples), image_size, image_size, 3), dtype=np.uint8)
    for i, (file, _) in enumerate(samples):
        try:
            with Image.open(file) as im:
                rgb = im.convert("RGB")
                if rgb.size != (image_size, image_size):
                    rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
                x[i] = np.asarray(rgb, dtype=np.uint8)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read image {file}: {e}") from None
    y = torch.tensor([k for _, k in samples], dtype=torch.int64)
    return ImageArrays(x=torch.from_numpy(x), y=y, classes=classes, name=name)


def _class_dirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        found += [Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return found
