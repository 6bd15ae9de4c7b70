"""A small learnable synthetic image classification problem, for tests and smoke runs without downloads.

Each class has a fixed smooth colour pattern (its prototype: a class colour plus a random 4x4 colour grid,
bilinearly upsampled), drawn from ``seed``; an image is its class prototype plus per-image Gaussian pixel
noise, clipped and quantised to uint8. Train and test share the prototypes and differ in noise, so what is
learned on train transfers to test; the patterns are smooth, so random crops and flips keep them learnable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rkd.checks import check_int
from rkd.data.arrays import ImageArrays
from rkd.data.seeds import derive_seed
from rkd.errors import UsageError

DEFAULT_SIZES: dict[str, int] = {"train": 256, "test": 128}


def make_synthetic(
    split: str,
    *,
    n: int | None = None,
    num_classes: int = 10,
    image_size: int = 32,
    seed: int = 0,
    noise: float = 0.1,
) -> ImageArrays:
    """``n`` images (default 256 train, 128 test) of ``num_classes`` balanced classes, deterministic in
    ``(seed, split)``.

    Args:
        split: ``"train"`` or ``"test"`` (selects the noise stream; the prototypes depend on ``seed`` only).
        n: number of images.
        num_classes: number of classes (>= 2).
        image_size: side of the square images.
        seed: seed of the prototypes and of the noise.
        noise: standard deviation of the per-pixel noise, in [0, 1] units.
    """
    n = DEFAULT_SIZES.get(split, 128) if n is None else n
    for key, value, low in (("n", n, 1), ("num_classes", num_classes, 2), ("image_size", image_size, 4)):
        check_int(f"synthetic {key}", value, low)
    if not 0.0 <= float(noise) <= 1.0:
        raise UsageError(f"synthetic noise must lie in [0, 1], got {noise!r}")
    g = torch.Generator().manual_seed(derive_seed("synthetic-prototypes", seed, num_classes))
    colour = torch.rand(num_classes, 3, 1, 1, generator=g)
    grid = torch.rand(num_classes, 3, 4, 4, generator=g)
    pattern = F.interpolate(grid, size=(image_size, image_size), mode="bilinear", align_corners=False)
    prototypes = 0.1 + 0.8 * (0.5 * colour + 0.5 * pattern)  # (K, 3, S, S) in [0.1, 0.9]

    g = torch.Generator().manual_seed(derive_seed("synthetic-samples", seed, split))
    y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    x = prototypes[y] + float(noise) * torch.randn(n, 3, image_size, image_size, generator=g)
    x = (x.clamp_(0.0, 1.0) * 255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return ImageArrays(x=x, y=y, classes=[f"class{k}" for k in range(num_classes)], name="synthetic")
