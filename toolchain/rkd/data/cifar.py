"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) through torchvision, or from a folder of ``{split}.npz`` files.

Lookup order under ``root``: ``root/{split}.npz`` (x uint8 NHWC, y labels; the layout of an offline copy),
then torchvision's ``cifar-10-batches-py`` / ``cifar-100-python`` folder, downloading it when allowed.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch

from rkd.data.arrays import ImageArrays
from rkd.data.npz import read_npz
from rkd.errors import DataError

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

CIFAR100_CLASSES: tuple[str, ...] = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle",
    "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear",
    "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray",
    "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree",
    "wolf", "woman", "worm",
)

_SPECS = {
    # name: (torchvision class, extracted folder, human name, class names)
    "cifar10": ("CIFAR10", "cifar-10-batches-py", "CIFAR-10", CIFAR10_CLASSES),
    "cifar100": ("CIFAR100", "cifar-100-python", "CIFAR-100", CIFAR100_CLASSES),
}


def default_data_root() -> Path:
    """Where downloaded data sets live: ``$RKD_DATA_ROOT`` if set, else ``~/.cache/rkd/data``."""
    env = os.environ.get("RKD_DATA_ROOT")
    return Path(env).expanduser() if env else Path("~/.cache/rkd/data").expanduser()


def load_cifar(
    name: str, split: str, *, root: str | Path | None = None, download: bool = True
) -> ImageArrays:
    """CIFAR-10 or CIFAR-100 (``name``), split ``"train"`` or ``"test"``, as uint8 NHWC arrays.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        split: ``"train"`` or ``"test"``.
        root: folder holding ``{split}.npz`` or torchvision's extracted archive (default
            :func:`default_data_root`).
        download: let torchvision download the archive when it is not under ``root``.

    Raises:
        DataError: the data is neither under ``root`` nor downloadable (offline), or is malformed.
    """
    tv_class, folder, human, classes = _SPECS[name]
    root = Path(root).expanduser() if root is not None else default_data_root()
    npz_files = {s: root / f"{s}.npz" for s in ("train", "test")}
    if npz_files[split].is_file():
        data = read_npz(npz_files[split], name=name, classes=list(classes))
        if tuple(data.x.shape[1:]) != (32, 32, 3):
            raise DataError(
                f"{npz_files[split]}: {human} images must be 32x32x3, got {tuple(data.x.shape[1:])}"
            )
        return data
    other = [p.name for p in npz_files.values() if p.is_file()]
    if other:
        raise DataError(f"{root} holds {', '.join(other)} but no {split}.npz; add it or point root elsewhere")

    import torchvision.datasets as tvd

    try:
        ds = getattr(tvd, tv_class)(str(root), train=(split == "train"), download=download)
    except (URLError, OSError, RuntimeError) as e:
        cause = (str(e).splitlines() or [type(e).__name__])[0]
        what = f"cannot download {name} into {root} (offline?)" if download else (
            f"{name} is not in {root} and download is off"
        )
        raise DataError(
            f"{what}: put the python-version {human} archive's extracted `{folder}` folder under {root}, "
            f"point --data-root at a folder that has it, or give npz:PATH as the data ({type(e).__name__}: "
            f"{cause})"
        ) from None
    x = torch.from_numpy(np.ascontiguousarray(ds.data, dtype=np.uint8))
    y = torch.as_tensor(ds.targets, dtype=torch.int64)
    return ImageArrays(x=x, y=y, classes=list(ds.classes), name=name)
