"""Building a run's inputs from a recipe: the training data (with its held-out split) and the models."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from rkd.config import DataConfig, ModelConfig, StrictModel
from rkd.data import FolderImages, ImageArrays, load_dataset, split_holdout
from rkd.errors import UsageError

#: ``data.stream: auto`` streams an image folder whose decoded training set would exceed this many bytes.
STREAM_ABOVE_BYTES = 1 << 30
#: ... or whose images are larger than this side (camera resolutions).
STREAM_ABOVE_SIZE = 64


@dataclass
class TrainingData:
    """Training images (in memory, or an image folder streamed from disk), held-out images for periodic
    evaluation (always in memory), the class names, and the transforms applied (recorded with the model)."""

    train: ImageArrays | FolderImages
    holdout: ImageArrays | None
    classes: list[str]
    transforms: dict[str, str] | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes of the data set."""
        return len(self.classes)


def load_training_data(cfg: DataConfig, *, seed: int, root: str | None = None) -> TrainingData:
    """Load the training split, hold out ``cfg.holdout`` images (seeded), then take ``cfg.train_subset``.

    An image folder is streamed from disk (:class:`rkd.data.FolderImages`) when ``data.stream`` says so, or
    with ``auto`` when its images are larger than 64 px or the decoded set would exceed 1 GiB; its held-out
    images are then decoded into memory with the evaluation transform.
    """
    opts = cfg.options()
    if cfg.dataset == "synthetic":
        opts["n"] = cfg.synthetic_n
    data: ImageArrays | FolderImages
    folder = streamed_folder(cfg, root=root)
    if folder is not None:
        data = folder
    else:
        data = load_dataset(cfg.dataset, "train", root=root or cfg.root, **opts)
    holdout: ImageArrays | FolderImages | None = None
    if cfg.holdout:
        data, holdout = split_holdout(data, cfg.holdout, seed)  # type: ignore[arg-type]
        if isinstance(holdout, FolderImages):
            holdout = holdout.decode()
    if cfg.train_subset is not None and cfg.train_subset > len(data):
        raise UsageError(f"data.train_subset is {cfg.train_subset} but {len(data)} training images are left after the "
                         f"{cfg.holdout} held out (data.holdout): lower it, or drop it to train on all of them")
    if cfg.train_subset is not None and cfg.train_subset < len(data):
        import torch

        gen = torch.Generator().manual_seed(seed + 1)
        idx = torch.randperm(len(data), generator=gen)[: cfg.train_subset].sort().values
        data = data.subset(idx)
    return TrainingData(train=data, holdout=holdout, classes=list(data.classes),
                        transforms=_transforms(cfg, data))


def streamed_folder(cfg: DataConfig, *, root: str | None = None) -> FolderImages | None:
    """The training split of an image folder as a :class:`FolderImages` when it is to be streamed
    (``data.stream``; ``auto``: above 64 px or 1 GiB decoded), else None (loaded into memory)."""
    if cfg.dataset != "imagefolder" or cfg.stream is False:
        return None
    opts = cfg.options()
    size = int(opts["image_size"])
    folder = FolderImages.scan(opts.get("path") or root or cfg.root or "", "train", image_size=size,
                               crop_ratio=opts.get("crop_ratio"), num_workers=cfg.num_workers)
    if cfg.stream is True or size > STREAM_ABOVE_SIZE or len(folder) * size * size * 3 > STREAM_ABOVE_BYTES:
        return folder
    return None


def _transforms(cfg: DataConfig, data: ImageArrays | FolderImages) -> dict[str, str] | None:
    """The training and evaluation transforms of an image folder, in torchvision's terms (None otherwise)."""
    if cfg.dataset != "imagefolder":
        return None
    from rkd.data.imagefolder import describe_eval_transform

    size = int(cfg.options()["image_size"])
    if isinstance(data, FolderImages):
        train = data.transforms["train"] if cfg.augment else "the evaluation transform"
        return {"loader": "streamed", "train": train, "eval": data.transforms["eval"]}
    evaluation = describe_eval_transform(size, cfg.resolved_crop_ratio())
    train = f"{evaluation}, then RandomCrop({size}, padding=4) + RandomHorizontalFlip()" if cfg.augment else evaluation
    return {"loader": "in memory", "train": train, "eval": evaluation}


def build_model(cfg: ModelConfig, num_classes: int) -> Any:
    """Instantiate a registered architecture for ``num_classes`` classes."""
    from rkd.models import create_model

    kwargs: dict[str, Any] = {"num_classes": num_classes, "width": cfg.width}
    if cfg.depth is not None:
        kwargs["depth"] = cfg.depth
    if cfg.widen_factor is not None:
        kwargs["widen_factor"] = cfg.widen_factor
    return create_model(cfg.name, **kwargs)


def _identity(dump: dict[str, Any]) -> dict[str, Any]:
    """``dump`` with the speed-only ``train.compile_attack`` fixed at false (so it may change between a run and
    its resume, and runs fingerprinted before ``auto`` existed still resume)."""
    train = dump.get("train")
    if isinstance(train, dict) and "compile_attack" in train:
        return {**dump, "train": {**train, "compile_attack": False}}
    return dump


def fingerprint(*sections: StrictModel | Any) -> str:
    """A stable hash of recipe sections (what a run's results depend on)."""
    payload = [_identity(s.model_dump(mode="json")) if isinstance(s, StrictModel) else s for s in sections]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
