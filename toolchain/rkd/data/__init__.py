"""Data: data sets as in-memory uint8 arrays, on-device augmentation and batching, image folders streamed from
disk, evaluation subsets.

torchvision and PIL are imported only inside the functions that need them, so ``import rkd.data`` is cheap.
"""

from __future__ import annotations

from rkd.data.arrays import ImageArrays
from rkd.data.augment import apply_crop_flip, crop_flip_params, random_crop_flip
from rkd.data.cifar import CIFAR10_CLASSES, CIFAR100_CLASSES, default_data_root
from rkd.data.datasets import (
    DATASETS,
    FALLBACK_DATASET,
    SPLITS,
    dataset_options,
    fit_to_model,
    load_dataset,
    parse_data_arg,
    recorded_data,
)
from rkd.data.loader import BatchLoader, make_loader
from rkd.data.npz import read_npz
from rkd.data.selection import Selection, load_selection
from rkd.data.stream import FolderImages, StreamLoader
from rkd.data.subsets import indices_sha256, samples_sha256, select_indices, split_holdout

__all__ = [
    "BatchLoader",
    "CIFAR100_CLASSES",
    "CIFAR10_CLASSES",
    "DATASETS",
    "FALLBACK_DATASET",
    "FolderImages",
    "Selection",
    "ImageArrays",
    "SPLITS",
    "StreamLoader",
    "apply_crop_flip",
    "crop_flip_params",
    "dataset_options",
    "default_data_root",
    "fit_to_model",
    "indices_sha256",
    "samples_sha256",
    "load_dataset",
    "load_selection",
    "make_loader",
    "parse_data_arg",
    "random_crop_flip",
    "read_npz",
    "recorded_data",
    "select_indices",
    "split_holdout",
]
