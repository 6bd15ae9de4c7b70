"""The fixed set of samples an evaluation runs on (``rkd eval`` and ``rkd verify`` alike): which data set,
split and options, which indices (first n or a seeded random subset), the images and labels, and the record
of them a report carries (the sha256 of the indices, so two reports can be checked to be on the same images).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rkd.data import indices_sha256, load_selection
from rkd.errors import CheckpointError


@dataclass(frozen=True)
class SampleSet:
    """``x`` (float NCHW in [0, 1]) and ``y`` (int64) at ``idx`` of ``dataset``'s ``split``."""

    dataset: str
    split: str
    sample: str  # first | random (seeded)
    idx: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    options: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The report's ``data`` section: what was evaluated, enough to select the same samples again."""
        return {"dataset": self.dataset, "split": self.split, "n": len(self.idx), "sample": self.sample,
                "indices_sha256": indices_sha256(self.idx), "first_indices": self.idx[:10].tolist()}


def load_samples(dataset: str, split: str, *, n: int | None, sample: str = "first", seed: int = 0,
                 root: str | None = None, options: dict[str, Any] | None = None, num_classes: int | None = None,
                 model: str = "the model", action: str = "evaluate") -> SampleSet:
    """Load ``n`` samples (all when None) of ``dataset`` as a :class:`SampleSet`; a large image folder is
    streamed, decoding only the selected files (:func:`rkd.data.load_selection`).

    ``num_classes``: the model's, when known; ``model`` and ``action`` name the model and the command in the
    error that refuses a mismatch.

    Raises:
        UsageError: more samples asked for than the split holds, or a bad selection.
        CheckpointError: a model with another number of classes than the data set.
    """
    chosen = load_selection(dataset, split, n=n, sample=sample, seed=seed, root=root, options=options)
    data = chosen.data
    if num_classes is not None and num_classes != len(data.classes):
        raise CheckpointError(f"{model} has {num_classes} classes but {dataset} has {len(data.classes)}: "
                              f"{action} it on the data set it was trained for")
    return SampleSet(dataset=dataset, split=split, sample=sample, idx=chosen.idx, x=data.to_float(), y=data.y,
                     classes=list(data.classes), options=dict(options or {}))
