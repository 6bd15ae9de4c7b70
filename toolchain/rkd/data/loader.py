"""``BatchLoader``: batches of a whole in-memory data set held on the training device, with on-device aug.

The uint8 images live on ``device`` (a CIFAR-scale set is 150 MB on the GPU); each step gathers its rows,
crops/flips them there (:mod:`rkd.data.augment`) and converts to float. No worker processes, no
host-to-device copy per step: on CUDA this removes the DataLoader bottleneck, and on a small CPU machine
(2 cores) it also beats a multi-process ``torch.utils.data.DataLoader``, whose workers would compete with the
training step for the cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from rkd.data.arrays import ImageArrays
from rkd.data.augment import apply_crop_flip, crop_flip_params
from rkd.data.seeds import derive_seed
from rkd.errors import UsageError

Batch = tuple[torch.Tensor, torch.Tensor]


class EpochLoader:
    """What every training loader shares: the global batch split over ranks, epochs selected with
    :meth:`set_epoch`, and an exact mid-epoch resume with :meth:`skip`. Subclasses set the fields through
    :meth:`_setup` and implement :attr:`num_samples` and :meth:`batches`."""

    batch_size: int
    world_size: int
    drop_last: bool
    device: torch.device
    shuffle: bool
    seed: int
    channels_last: bool
    _epoch: int
    _skip: int

    def _setup(self, n: int, name: str, *, batch_size: int, drop_last: bool, rank: int, world_size: int) -> None:
        """Check the batching arguments against ``n`` samples of data set ``name`` and set them."""
        if n == 0:
            raise UsageError(f"{name}: cannot batch an empty data set")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}")
        if drop_last and batch_size > n:
            raise UsageError(
                f"batch_size {batch_size} is larger than the data set ({n} samples) with drop_last: "
                f"use a batch size <= {n}"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise UsageError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if batch_size % world_size:
            raise UsageError(f"global batch_size {batch_size} is not divisible by world_size {world_size}")
        self.batch_size, self.drop_last, self.rank, self.world_size = batch_size, drop_last, rank, world_size
        self._epoch = 0
        self._skip = 0

    def _set_options(self, name: str, classes: list[str], *, device: str | torch.device, shuffle: bool,
                     augment: bool, seed: int, channels_last: bool) -> None:
        """Set what every loader keeps of its data set and options."""
        self.device = torch.device(device)
        self.classes = list(classes)
        self.name = name
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.channels_last = channels_last

    def _epoch_order(self) -> torch.Tensor:
        """The current epoch's sample order, on the CPU: a permutation drawn from ``(seed, epoch)`` when
        shuffling, else the stored order (every loader draws the same one)."""
        n = self.num_samples
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(derive_seed("batchloader-order", self.seed, self._epoch))
        return torch.randperm(n, generator=g)

    def _to_float(self, xb: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC images as float32 NCHW in [0, 1], channels-last in memory when the loader says so."""
        x = xb.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    @property
    def num_samples(self) -> int:  # pragma: no cover - abstract
        """Number of samples in the data set (all ranks together)."""
        raise NotImplementedError

    @property
    def local_batch_size(self) -> int:
        """Rows this rank gets per full step (``batch_size // world_size``)."""
        return self.batch_size // self.world_size

    @property
    def epoch(self) -> int:
        """The epoch the next iteration produces."""
        return self._epoch

    def __len__(self) -> int:
        """Steps per epoch."""
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration produce epoch ``epoch``'s order and augmentation."""
        self._epoch = int(epoch)

    def skip(self, n_steps: int) -> EpochLoader:
        """Make the next iteration start at step ``n_steps`` of the epoch (mid-epoch resume); returns self."""
        if not 0 <= n_steps <= len(self):
            raise UsageError(f"cannot skip {n_steps} steps of an epoch of {len(self)}")
        self._skip = int(n_steps)
        return self

    def __iter__(self) -> Iterator[Batch]:
        start, self._skip = self._skip, 0
        return self.batches(start_step=start)

    def batches(self, start_step: int = 0) -> Iterator[Batch]:  # pragma: no cover - abstract
        """The current epoch's batches from step ``start_step`` on."""
        raise NotImplementedError


class BatchLoader(EpochLoader):
    """Iterable over ``(x, y)`` batches: ``x`` float32 NCHW in [0, 1], ``y`` int64, both on ``device``.

    The order and the augmentation of an epoch are a deterministic function of ``(seed, epoch)``; call
    :meth:`set_epoch` before each epoch (as with ``DistributedSampler``); otherwise every epoch repeats
    epoch 0.

    Distributed (``world_size > 1``): ``batch_size`` is the GLOBAL batch. Every rank draws the same
    permutation and augmentation, and rank ``r`` gets rows ``r::world_size`` of each global batch, so the
    union over ranks of one step's batches is exactly the single-process batch. ``batch_size`` must be
    divisible by ``world_size``; with ``drop_last=False`` the last global batch may split unevenly (a rank can
    even get an empty batch), so evaluation code should sum counts across ranks.

    Resuming mid-epoch: ``loader.set_epoch(e); loader.skip(k)`` (or ``loader.batches(start_step=k)``) yields
    exactly the batches an uninterrupted epoch ``e`` yields from step ``k`` on.

    Args:
        data: the data set (uint8 NHWC); copied to ``device`` once.
        batch_size: global batch size.
        device: where the arrays live and batches are produced.
        shuffle: a fresh permutation per epoch (else the stored order).
        augment: random crop (zero padding ``padding``) + horizontal flip.
        drop_last: drop the last incomplete batch.
        seed: base seed of the order and the augmentation.
        rank: this process's rank; world_size: number of processes.
        channels_last: return ``x`` in ``torch.channels_last`` memory format (free: it is the NHWC layout).
        padding: crop padding in pixels.
    """

    def __init__(
        self,
        data: ImageArrays,
        *,
        batch_size: int,
        device: str | torch.device = "cpu",
        shuffle: bool = True,
        augment: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        padding: int = 4,
    ) -> None:
        self._setup(len(data), data.name, batch_size=batch_size, drop_last=drop_last, rank=rank,
                    world_size=world_size)
        if padding < 0:
            raise UsageError(f"padding must be >= 0, got {padding}")
        self._set_options(data.name, data.classes, device=device, shuffle=shuffle, augment=augment, seed=seed,
                          channels_last=channels_last)
        self.x = data.x.to(self.device)
        self.y = data.y.to(self.device)
        self.padding = padding
        self._plan: tuple[int, torch.Tensor, tuple[torch.Tensor, ...] | None] | None = None

    @property
    def num_samples(self) -> int:
        """Number of samples in the data set (all ranks together)."""
        return int(self.x.shape[0])

    def batches(self, start_step: int = 0) -> Iterator[Batch]:
        """The current epoch's batches from step ``start_step`` on."""
        if not 0 <= start_step <= len(self):
            raise UsageError(f"start_step {start_step} is outside an epoch of {len(self)} steps")
        order, aug = self._epoch_plan()
        n, b = self.num_samples, self.batch_size
        for step in range(start_step, len(self)):
            rows = slice(step * b + self.rank, min((step + 1) * b, n), self.world_size)
            idx = order[rows]
            xb = self.x[idx]
            if aug is not None:
                dy, dx, flip = aug
                xb = apply_crop_flip(xb, dy[rows], dx[rows], flip[rows], padding=self.padding)
            yield self._to_float(xb), self.y[idx]

    def _epoch_plan(self) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        if self._plan is not None and self._plan[0] == self._epoch:
            return self._plan[1], self._plan[2]
        n = self.num_samples
        order = self._epoch_order().to(self.device)
        aug = None
        if self.augment:
            g = torch.Generator(device=self.device)
            g.manual_seed(derive_seed("batchloader-augment", self.seed, self._epoch))
            aug = crop_flip_params(n, padding=self.padding, generator=g, device=self.device)
        self._plan = (self._epoch, order, aug)
        return order, aug


def make_loader(data: object, **kwargs: Any) -> EpochLoader:
    """The loader for ``data``: a :class:`BatchLoader` for in-memory ``ImageArrays``, a
    :class:`~rkd.data.stream.StreamLoader` for a streamed :class:`~rkd.data.stream.FolderImages` (whose
    augmentation is its own, so ``padding`` is not passed on). Keyword arguments as for ``BatchLoader``."""
    from rkd.data.stream import FolderImages, StreamLoader

    if isinstance(data, FolderImages):
        kwargs.pop("padding", None)
        return StreamLoader(data, **kwargs)
    if not isinstance(data, ImageArrays):
        raise UsageError(f"cannot batch a {type(data).__name__}: expected ImageArrays or FolderImages")
    return BatchLoader(data, **kwargs)
