"""The selected images of one split (an evaluation, calibration or parity set), loaded without decoding more of
an image folder than the selection needs.

Rule (:func:`streams`): an image folder whose model-side images are larger than 64 px, or whose split holds more
than 2,048 files, is scanned (file names only) and just the selected files are decoded, by DataLoader worker
processes, in the selection's order; memory then grows with the selection, never with the folder. Smaller
folders (a CIFAR-sized set of 32x32 files) and every other data set are loaded whole and then subset, which is
faster there (no worker start-up). Both paths decode each file with the same evaluation transform
(:func:`rkd.data.imagefolder.decode_eval`) and select the same indices (:func:`rkd.data.subsets.select_indices`,
seeded), so they return identical tensors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from rkd.data.arrays import ImageArrays
from rkd.data.datasets import SPLITS, check_options, load_dataset
from rkd.data.subsets import select_indices
from rkd.errors import UsageError
from rkd.registry import did_you_mean

#: An image folder is streamed when its images are decoded larger than this side (pixels) ...
STREAM_ABOVE_SIZE = 64
#: ... or when its split holds more files than this.
STREAM_ABOVE_FILES = 2048


def streams(n_files: int, image_size: int) -> bool:
    """Whether a split of ``n_files`` images decoded at ``image_size`` is streamed (see the module's rule)."""
    return image_size > STREAM_ABOVE_SIZE or n_files > STREAM_ABOVE_FILES


def decode_workers() -> int:
    """Worker processes that decode a selection: the usable CPUs (nothing else runs meanwhile), 1..8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


@dataclass(frozen=True)
class Selection:
    """The rows ``idx`` (sorted positions in a split of ``total`` images) as ``data``; ``streamed``: only they
    were decoded, from disk."""

    data: ImageArrays
    idx: torch.Tensor
    total: int
    streamed: bool


def load_selection(
    name: str,
    split: str,
    *,
    n: int | None,
    sample: str = "first",
    seed: int = 0,
    root: str | Path | None = None,
    options: dict[str, Any] | None = None,
    download: bool = True,
    fewer_ok: bool = False,
    flag: str = "--n",
    stream: bool | Literal["auto"] = "auto",
    num_workers: int | None = None,
) -> Selection:
    """``n`` images (all when None) of ``split`` of data set ``name``, chosen by ``sample`` (``first`` or a
    ``random`` subset seeded by ``seed``).

    Args:
        name, split, root, options, download: as for :func:`rkd.data.load_dataset`.
        fewer_ok: take the whole split when it holds fewer than ``n`` images (else a UsageError naming ``flag``).
        stream: for an image folder, ``auto`` applies :func:`streams`; True/False force either path.
        num_workers: decoding processes when streaming (default :func:`decode_workers`; 0: in this process).

    Raises:
        UsageError: unknown data set, split or option; more images asked for than the split holds.
        DataError: the data cannot be found or read.
    """
    options = dict(options or {})
    folder = None
    if name == "imagefolder" and stream is not False:
        from rkd.data.stream import FolderImages

        if split not in SPLITS:
            raise UsageError(f"unknown split '{split}'{did_you_mean(split, SPLITS)}; choose one of: train, test")
        check_options(name, options)
        path = options.get("path", root)
        if path is None:
            raise UsageError("the imagefolder data set needs a path: --data imagefolder:PATH")
        size = options.get("image_size", 32)
        folder = FolderImages.scan(Path(path).expanduser(), split, image_size=size,
                                   crop_ratio=options.get("crop_ratio"), num_workers=0)
        if stream == "auto" and not streams(len(folder), size):
            folder = None
    total = len(folder) if folder is not None else None
    data = None
    if folder is None:
        data = load_dataset(name, split, root=root, download=download, **options)
        total = len(data)
    assert total is not None
    if n is not None and n > total:
        if not fewer_ok:
            kind = "training" if split == "train" else split
            raise UsageError(f"{flag} {n} asks for more samples than {name} has: only {total} {kind} images; "
                             f"lower {flag}")
        n = total
    idx = select_indices(total, n, seed=seed, mode=sample)
    if folder is not None:
        workers = decode_workers() if num_workers is None else int(num_workers)
        return Selection(data=folder.subset(idx).decode(num_workers=workers), idx=idx, total=total, streamed=True)
    assert data is not None
    picked = data if len(idx) == total else data.subset(idx)
    return Selection(data=picked, idx=idx, total=total, streamed=False)
