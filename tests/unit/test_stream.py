"""Image folders streamed from disk: the evaluation and training transforms, StreamLoader's determinism,
resume and rank split, and the choice between streaming and memory in ``load_training_data``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rkd.config import DataConfig
from rkd.data import FolderImages, ImageArrays, StreamLoader, load_dataset, make_loader
from rkd.data.imagefolder import decode_eval, eval_resize
from rkd.data.stream import decode_train, resized_crop_params
from rkd.train.build import load_training_data

CLASSES = ("cat", "dog", "fox")


def write_folder(root: Path, per_class: int = 4, sizes: tuple[tuple[int, int], ...] = ((48, 40), (70, 90))) -> Path:
    """A tiny ImageFolder tree of random PNGs of mixed sizes: ``root/{train,test}/{cat,dog,fox}/*.png``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 2)):
        for k, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                w, h = sizes[i % len(sizes)]
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                pixels[..., k] = 200  # a class-dependent colour
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("images"))


def test_eval_transform_is_torchvisions_resize_and_center_crop(folder: Path) -> None:
    from PIL import Image
    from torchvision import transforms

    file = folder / "train" / "dog" / "001.png"
    ours = decode_eval(file, 64, 0.875)
    assert eval_resize(224, 0.875) == 256 and eval_resize(96, 0.875) == 109
    ref = transforms.Compose([transforms.Resize(int(64 / 0.875)), transforms.CenterCrop(64)])
    with Image.open(file) as im:
        expected = np.asarray(ref(im.convert("RGB")))
    assert ours.shape == (64, 64, 3) and np.array_equal(ours, expected)
    assert decode_eval(file, 32, None).shape == (32, 32, 3)  # the plain resize of the in-memory path


def test_train_transform_is_a_seeded_random_resized_crop_and_flip(folder: Path) -> None:
    import random

    file = folder / "train" / "cat" / "000.png"
    a, b, c = decode_train(file, 64, 1), decode_train(file, 64, 1), decode_train(file, 64, 2)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    for seed in range(200):
        top, left, h, w = resized_crop_params(48, 40, random.Random(seed))
        assert 0 <= top and 0 <= left and top + h <= 40 and left + w <= 48 and h > 0 and w > 0


def test_folder_images_scan_subset_and_decode(folder: Path) -> None:
    data = FolderImages.scan(folder, "train", image_size=48, crop_ratio=0.875, num_workers=0)
    assert data.classes == list(CLASSES) and len(data) == 12 and data.image_shape == (3, 48, 48)
    assert data.y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    part = data.subset(torch.tensor([1, 5, 9]))
    assert part.y.tolist() == [0, 1, 2] and part.files[1] == data.files[5]
    arrays = part.decode()
    assert isinstance(arrays, ImageArrays) and tuple(arrays.x.shape) == (3, 48, 48, 3)
    assert np.array_equal(arrays.x[0].numpy(), decode_eval(data.files[1], 48, 0.875))
    assert ("RandomResizedCrop(48" in data.transforms["train"]
            and data.transforms["eval"] == "Resize(54) + CenterCrop(48)")


def _epoch(loader: StreamLoader, epoch: int, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader.batches(start_step=start))


def test_stream_loader_batches_are_deterministic_and_independent_of_workers(folder: Path) -> None:
    data = FolderImages.scan(folder, "train", image_size=40, num_workers=0)
    one = StreamLoader(data, batch_size=4, seed=3)
    assert len(one) == 3
    batches = _epoch(one, 0)
    x, y = batches[0]
    assert x.shape == (4, 3, 40, 40) and x.dtype == torch.float32 and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
    assert y.dtype == torch.int64
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == sorted(data.y.tolist())
    workers = StreamLoader(data, batch_size=4, seed=3, num_workers=2)
    for (xa, ya), (xb, yb) in zip(batches, _epoch(workers, 0), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(_epoch(one, 1)[0][0], x)  # a new epoch: a new order and new crops
    # resume mid-epoch: the same batches as the uninterrupted epoch from that step on
    tail = _epoch(one, 0, start=1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches[1:], tail, strict=True))


def test_stream_loader_ranks_split_each_global_batch(folder: Path) -> None:
    data = FolderImages.scan(folder, "train", image_size=32, num_workers=0)
    full = _epoch(StreamLoader(data, batch_size=4, seed=0, augment=False), 0)
    r0 = _epoch(StreamLoader(data, batch_size=4, seed=0, augment=False, rank=0, world_size=2), 0)
    r1 = _epoch(StreamLoader(data, batch_size=4, seed=0, augment=False, rank=1, world_size=2), 0)
    for (x, y), (x0, y0), (x1, y1) in zip(full, r0, r1, strict=True):
        assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1)
        assert torch.equal(y[0::2], y0) and torch.equal(y[1::2], y1)


def test_make_loader_picks_by_data_kind(folder: Path) -> None:
    streamed = FolderImages.scan(folder, "train", image_size=32, num_workers=0)
    assert isinstance(make_loader(streamed, batch_size=4, padding=4), StreamLoader)
    in_memory = load_dataset("imagefolder", "train", path=str(folder), image_size=32)
    assert type(make_loader(in_memory, batch_size=4)).__name__ == "BatchLoader"


@pytest.mark.parametrize("size,stream,streamed", [(32, "auto", False), (72, "auto", True), (32, True, True),
                                                  (72, False, False)])
def test_training_data_streams_above_64_px_or_when_asked(
    folder: Path, size: int, stream: object, streamed: bool
) -> None:
    cfg = DataConfig(dataset="imagefolder", path=str(folder), image_size=size, stream=stream, holdout=3,
                     num_workers=0)
    data = load_training_data(cfg, seed=0)
    assert isinstance(data.train, FolderImages) is streamed
    assert isinstance(data.holdout, ImageArrays) and len(data.holdout) == 3 and len(data.train) == 9
    assert tuple(data.holdout.x.shape[1:]) == (size, size, 3)
    assert data.classes == list(CLASSES) and data.transforms is not None
    assert data.transforms["loader"] == ("streamed" if streamed else "in memory")
    crop = cfg.options().get("crop_ratio")
    assert crop == (0.875 if size > 64 else None)
    # the recorded options reproduce the evaluation images
    test = load_dataset("imagefolder", "test", **cfg.options())
    assert tuple(test.x.shape) == (6, size, size, 3)
    assert np.array_equal(test.x[0].numpy(), decode_eval(folder / "test" / "cat" / "000.png", size, crop))
