"""Building a run's inputs from a recipe: the training data (with its held-out split) and the models."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from rkd.config import DataConfig, ModelConfig, StrictModel
from rkd.data import ImageArrays, load_dataset, split_holdout
from rkd.errors import UsageError


@dataclass
class TrainingData:
    """Training images, held-out images for periodic evaluation, and the class names."""

    train: ImageArrays
    holdout: ImageArrays | None
    classes: list[str]

    @property
    def num_classes(self) -> int:
        """Number of classes of the data set."""
        return len(self.classes)


def load_training_data(cfg: DataConfig, *, seed: int, root: str | None = None) -> TrainingData:
    """Load the training split, hold out ``cfg.holdout`` images (seeded), then take ``cfg.train_subset``."""
    opts = cfg.options()
    if cfg.dataset == "synthetic":
        opts["n"] = cfg.synthetic_n
    data = load_dataset(cfg.dataset, "train", root=root or cfg.root, **opts)
    holdout: ImageArrays | None = None
    if cfg.holdout:
        data, holdout = split_holdout(data, cfg.holdout, seed)
    if cfg.train_subset is not None and cfg.train_subset > len(data):
        raise UsageError(f"data.train_subset is {cfg.train_subset} but {len(data)} training images are left after the "
                         f"{cfg.holdout} held out (data.holdout): lower it, or drop it to train on all of them")
    if cfg.train_subset is not None and cfg.train_subset < len(data):
        import torch

        gen = torch.Generator().manual_seed(seed + 1)
        idx = torch.randperm(len(data), generator=gen)[: cfg.train_subset].sort().values
        data = data.subset(idx)
    return TrainingData(train=data, holdout=holdout, classes=list(data.classes))


def build_model(cfg: ModelConfig, num_classes: int) -> Any:
    """Instantiate a registered architecture for ``num_classes`` classes."""
    from rkd.models import create_model

    kwargs: dict[str, Any] = {"num_classes": num_classes, "width": cfg.width}
    if cfg.depth is not None:
        kwargs["depth"] = cfg.depth
    if cfg.widen_factor is not None:
        kwargs["widen_factor"] = cfg.widen_factor
    return create_model(cfg.name, **kwargs)


def fingerprint(*sections: StrictModel | Any) -> str:
    """A stable hash of recipe sections (what a run's results depend on)."""
    payload = [s.model_dump(mode="json") if isinstance(s, StrictModel) else s for s in sections]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
