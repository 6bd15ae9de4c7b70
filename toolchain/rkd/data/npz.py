"""Reading image arrays from ``.npz`` files, validated, never unpickled.

Layout accepted (the layout of the development copy of CIFAR-10): arrays ``x`` (uint8 NHWC, or NHW grayscale,
or float in [0, 1]) and ``y`` (integer labels >= 0), optionally ``classes`` (strings). A file may instead hold
per-split arrays ``x_train``/``y_train``/``x_test``/``y_test``. Files are opened with
``np.load(path, allow_pickle=False)``: object arrays (which would need pickle) are refused.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from rkd.data.arrays import ImageArrays
from rkd.errors import DataError


def read_npz(
    path: str | Path,
    *,
    split: str | None = None,
    name: str = "npz",
    classes: list[str] | None = None,
    num_classes: int | None = None,
) -> ImageArrays:
    """Load and validate one ``.npz`` file into :class:`ImageArrays`.

    Args:
        path: the ``.npz`` file.
        split: used to pick ``x_{split}``/``y_{split}`` when the file has no plain ``x``/``y``.
        name: the data set name recorded in the result.
        classes: class names to use (the file's own ``classes`` array must then agree in length).
        num_classes: number of classes when no names are known (default ``max(y) + 1``).

    Raises:
        DataError: missing file or key, a pickled object array, wrong dtype or shape, bad labels.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"npz file not found: {path}")
    try:
        npz = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e):
            raise DataError(
                f"{path} holds pickled data, which rkd refuses to load; save plain arrays with "
                f"np.savez(path, x=uint8_images, y=labels)"
            ) from None
        raise DataError(f"cannot read {path} as .npz: {e}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"cannot read {path} as .npz: {e}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{path} is a single .npy array, expected an .npz archive with arrays 'x' and 'y'")
    with npz:
        keys = set(npz.files)
        xk, yk = "x", "y"
        per_split = {f"x_{split}", f"y_{split}"}
        if ("x" not in keys or "y" not in keys) and split is not None and per_split <= keys:
            xk, yk = f"x_{split}", f"y_{split}"
        missing = [k for k in (xk, yk) if k not in keys]
        if missing:
            raise DataError(
                f"{path} lacks array(s) {', '.join(repr(k) for k in missing)} "
                f"(has: {', '.join(sorted(keys)) or 'nothing'}); save with np.savez(path, x=images, y=labels)"
            )
        x = _get(npz, xk, path)
        y = _get(npz, yk, path)
        file_classes = _get(npz, "classes", path) if "classes" in keys else None

    x = _images_uint8(x, path, xk)
    y = _labels(y, path, yk, n=len(x))
    if file_classes is not None:
        if file_classes.dtype.kind not in "US" or file_classes.ndim != 1:
            raise DataError(f"{path}: 'classes' must be a 1-D string array, got {file_classes.dtype}")
        names = [str(c.decode() if isinstance(c, bytes) else c) for c in file_classes.tolist()]
        if classes is not None and len(classes) != len(names):
            raise DataError(f"{path}: 'classes' has {len(names)} names, expected {len(classes)}")
        classes = classes if classes is not None else names
    if classes is None:
        k = num_classes if num_classes is not None else int(y.max()) + 1
        classes = [str(i) for i in range(k)]
    if num_classes is not None and num_classes != len(classes):
        raise DataError(f"{path}: num_classes={num_classes} but the file names {len(classes)} classes")
    if int(y.max()) >= len(classes):
        raise DataError(f"{path}: label {int(y.max())} is out of range for {len(classes)} classes")
    return ImageArrays(x=torch.from_numpy(x), y=torch.from_numpy(y), classes=classes, name=name)


def _get(npz: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return npz[key]
    except ValueError:  # object arrays need pickle, which allow_pickle=False refuses
        raise DataError(
            f"{path}: array '{key}' is a pickled object array, which rkd refuses to load; "
            f"save plain numeric arrays (uint8 images, integer labels)"
        ) from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: array '{key}' is unreadable ({e})") from None


def _images_uint8(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    if x.ndim == 3:  # NHW grayscale
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{path}: '{key}' must be NHWC images (or NHW grayscale), got shape {x.shape}")
    if x.shape[-1] not in (1, 3):
        hint = " (looks like NCHW: save x.transpose(0, 2, 3, 1))" if x.shape[1] in (1, 3) else ""
        raise DataError(f"{path}: '{key}' must have 1 or 3 channels last (NHWC), got shape {x.shape}{hint}")
    if len(x) == 0:
        raise DataError(f"{path}: '{key}' holds no images")
    if x.dtype == np.uint8:
        pass
    elif x.dtype.kind == "f":
        if not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
            raise DataError(
                f"{path}: float images in '{key}' must lie in [0, 1], found "
                f"{float(np.nanmin(x)):.4g}..{float(np.nanmax(x)):.4g}; save uint8 images instead"
            )
        x = np.rint(x.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise DataError(f"{path}: '{key}' must be uint8 (or float in [0, 1]), got {x.dtype}")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.ascontiguousarray(x)


def _labels(y: np.ndarray, path: Path, key: str, n: int) -> np.ndarray:
    if y.dtype.kind not in "iu":
        raise DataError(f"{path}: labels '{key}' must be integers, got {y.dtype}")
    if y.ndim != 1:
        raise DataError(f"{path}: labels '{key}' must be 1-D, got shape {y.shape} (save y.reshape(-1))")
    if len(y) != n:
        raise DataError(f"{path}: {n} images but {len(y)} labels")
    if y.min() < 0:
        raise DataError(f"{path}: labels must be >= 0, found {int(y.min())}")
    return np.ascontiguousarray(y.astype(np.int64))
