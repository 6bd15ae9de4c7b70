"""Random crop with zero padding and random horizontal flip (the standard CIFAR augmentation), vectorised.

Works on a uint8 NHWC batch on any device with one padded copy and one gather: no per-image Python loop, so
it runs on the GPU next to a data set that lives there.
"""

from __future__ import annotations

import torch

from rkd.errors import UsageError


def crop_flip_params(
    n: int, *, padding: int, generator: torch.Generator, device: str | torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``(dy, dx, flip)`` for ``n`` images: offsets uniform in ``[0, 2*padding]``, flips with p=0.5.

    Drawn in that order from ``generator`` (which must live on ``device``, default the generator's device).
    """
    device = generator.device if device is None else torch.device(device)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    return dy, dx, flip


def apply_crop_flip(
    x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, *, padding: int
) -> torch.Tensor:
    """Zero-pad ``x`` (uint8 NHWC) by ``padding``, take the HxW window at ``(dy, dx)`` per image and mirror it
    horizontally where ``flip``; returns a new contiguous tensor shaped like ``x``."""
    if x.ndim != 4:
        raise UsageError(f"expected an NHWC batch, got shape {tuple(x.shape)}")
    n, h, w, c = x.shape
    if padding > 0:
        padded = x.new_zeros((n, h + 2 * padding, w + 2 * padding, c))
        padded[:, padding:padding + h, padding:padding + w] = x
    else:
        padded = x
    dev = x.device
    rows = dy.to(dev)[:, None] + torch.arange(h, device=dev)[None, :]  # (N, H)
    cols = dx.to(dev)[:, None] + torch.arange(w, device=dev)[None, :]  # (N, W)
    cols = torch.where(flip.to(dev)[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=dev)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]]


def random_crop_flip(
    x_uint8_nhwc: torch.Tensor, *, padding: int = 4, generator: torch.Generator
) -> torch.Tensor:
    """Random-crop (zero padding ``padding``, offsets uniform in ``[0, 2*padding]``) and random horizontal
    flip (p=0.5) of every image in a uint8 NHWC batch, as in He et al. (2016)'s CIFAR setup; same shape and
    dtype.

    ``generator`` must live on the batch's device; the same generator state gives the same output.
    """
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise UsageError(f"padding must be a non-negative integer, got {padding!r}")
    dy, dx, flip = crop_flip_params(len(x_uint8_nhwc), padding=padding, generator=generator,
                                    device=x_uint8_nhwc.device)
    return apply_crop_flip(x_uint8_nhwc, dy, dx, flip, padding=padding)
