"""Selected images of a split (evaluation, calibration, parity): a large image folder is streamed, decoding only
the selected files, with the same tensors and order as the in-memory path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import rkd.data.selection as selection
import rkd.data.stream as stream
from rkd.data import FolderImages, load_selection
from rkd.errors import UsageError

CLASSES = ("ant", "bee", "cow")


def write_folder(root: Path, train: int = 7, test: int = 5) -> Path:
    """Random PNGs of mixed sizes (some not square, some already 32x32) in ``root/{train,test}/CLASS/``."""
    from PIL import Image

    rng = np.random.default_rng(1)
    sizes = ((32, 32), (50, 37), (41, 64))
    for split, n in (("train", train), ("test", test)):
        for k, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                w, h = sizes[(i + k) % len(sizes)]
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("sel"))


@pytest.mark.parametrize(("sample", "n", "crop"), [("first", 6, None), ("random", 8, None), ("random", None, 0.875)])
def test_streamed_selection_is_the_in_memory_one(folder: Path, sample: str, n: int | None,
                                                 crop: float | None) -> None:
    options = {"path": str(folder), "image_size": 32, **({"crop_ratio": crop} if crop else {})}
    memory = load_selection("imagefolder", "test", n=n, sample=sample, seed=3, options=options, stream=False)
    streamed = load_selection("imagefolder", "test", n=n, sample=sample, seed=3, options=options, stream=True,
                              num_workers=0)
    assert not memory.streamed and streamed.streamed
    assert memory.total == streamed.total == 15
    assert torch.equal(memory.idx, streamed.idx)
    assert torch.equal(memory.data.x, streamed.data.x) and torch.equal(memory.data.y, streamed.data.y)
    assert memory.data.classes == streamed.data.classes == list(CLASSES)
    assert torch.equal(memory.data.to_float(), streamed.data.to_float())


def test_worker_decoding_returns_the_same_array_in_file_order(folder: Path) -> None:
    files = FolderImages.scan(folder, "train", image_size=32, num_workers=0)
    alone = files.decode(num_workers=0)
    workers = files.decode(num_workers=2, chunk=4)  # 21 images in 6 chunks over 2 processes
    assert torch.equal(alone.x, workers.x) and torch.equal(alone.y, workers.y)


def test_random_selection_is_fixed_by_the_seed(folder: Path) -> None:
    options = {"path": str(folder), "image_size": 40}
    a, b, c = (load_selection("imagefolder", "train", n=6, sample="random", seed=s, options=options,
                              stream=True, num_workers=0) for s in (5, 5, 6))
    assert torch.equal(a.idx, b.idx) and torch.equal(a.data.x, b.data.x)
    assert not torch.equal(a.idx, c.idx)
    assert torch.equal(a.idx, a.idx.sort().values) and a.data.x.shape == (6, 40, 40, 3)


def test_streaming_decodes_only_the_selected_files(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def whole_split(*args: object, **kwargs: object) -> None:
        raise AssertionError("the whole split was loaded")

    decoded: list[Path] = []
    real = stream.decode_eval
    monkeypatch.setattr(selection, "load_dataset", whole_split)
    monkeypatch.setattr(stream, "decode_eval", lambda f, *a: decoded.append(f) or real(f, *a))
    monkeypatch.setattr("rkd.data.imagefolder.decode_eval", stream.decode_eval)
    chosen = load_selection("imagefolder", "train", n=4, sample="random", seed=0,
                            options={"path": str(folder), "image_size": 96}, num_workers=0)
    assert chosen.streamed and chosen.total == 21 and len(decoded) == 4
    assert chosen.data.x.shape == (4, 96, 96, 3)


def test_the_rule_keeps_small_32px_folders_in_memory(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not selection.streams(2048, 64) and selection.streams(2049, 32) and selection.streams(10, 65)
    small = load_selection("imagefolder", "test", n=3, options={"path": str(folder), "image_size": 32})
    assert not small.streamed and small.data.x.shape == (3, 32, 32, 3)
    monkeypatch.setattr(selection, "STREAM_ABOVE_FILES", 10)
    assert load_selection("imagefolder", "test", n=3, options={"path": str(folder), "image_size": 32},
                          num_workers=0).streamed


def test_too_many_images_names_the_flag_or_takes_all(folder: Path) -> None:
    options = {"path": str(folder), "image_size": 96}
    with pytest.raises(UsageError, match=r"--calib-n 99 asks for more samples than imagefolder has: "
                                         r"only 21 training images; lower"):
        load_selection("imagefolder", "train", n=99, options=options, flag="--calib-n")
    assert len(load_selection("imagefolder", "train", n=99, options=options, fewer_ok=True, num_workers=0).idx) == 21
    with pytest.raises(UsageError, match="image_sise"):
        load_selection("imagefolder", "train", n=1, options={"path": str(folder), "image_sise": 96})


def test_eval_calibration_and_parity_sets_never_load_a_large_folder_whole(folder: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from rkd.deploy.export import _load_parity_data
    from rkd.quantize.pipeline import _load_split
    from rkd.verify.samples import load_samples

    def whole_split(*args: object, **kwargs: object) -> None:
        raise AssertionError("the whole split was loaded")

    monkeypatch.setattr(selection, "load_dataset", whole_split)
    monkeypatch.setattr(selection, "decode_workers", lambda: 0)
    options = {"path": str(folder), "image_size": 72, "crop_ratio": 0.875}
    samples = load_samples("imagefolder", "test", n=4, sample="random", seed=1, options=options)
    assert samples.x.shape == (4, 3, 72, 72) and samples.x.dtype == torch.float32
    calib = _load_split("imagefolder", options, "train", None, "calibration", n=5, sample="random", seed=2)
    assert calib.streamed and len(calib.data) == 5
    parity = _load_parity_data("imagefolder", options, None, 256)  # fewer test images than asked: all 15
    assert parity.streamed and torch.equal(parity.idx, torch.arange(15))
