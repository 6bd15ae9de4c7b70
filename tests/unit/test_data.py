"""Unit tests of rkd.data: arrays, data sets, augmentation, batching, subsets."""

from __future__ import annotations

import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rkd.data import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    DATASETS,
    BatchLoader,
    ImageArrays,
    indices_sha256,
    load_dataset,
    parse_data_arg,
    random_crop_flip,
    select_indices,
    split_holdout,
)
from rkd.errors import DataError, UsageError

REPO_ROOT = Path(__file__).resolve().parents[2]


def _arrays(n: int = 40, size: int = 8, num_classes: int = 4, seed: int = 0) -> ImageArrays:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, size, size, 3), generator=g, dtype=torch.uint8)
    # Encode the row index in pixel (0, 0) so tests can tell which sample a batch row came from.
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    y = torch.arange(n) % num_classes
    return ImageArrays(x=x, y=y, classes=[str(k) for k in range(num_classes)], name="toy")


# --------------------------------------------------------------------------------------------- arrays


def test_image_arrays_subset_and_to_float() -> None:
    data = _arrays(10)
    assert len(data) == 10 and data.num_classes == 4 and data.image_shape == (3, 8, 8)
    sub = data.subset([3, 1])
    assert torch.equal(sub.x, data.x[[3, 1]]) and sub.y.tolist() == [3, 1]
    xf = data.to_float([3, 1])
    assert xf.dtype == torch.float32 and xf.shape == (2, 3, 8, 8) and xf.is_contiguous()
    assert torch.allclose(xf, data.x[[3, 1]].permute(0, 3, 1, 2).float() / 255)
    assert data.to_float().shape == (10, 3, 8, 8)


def test_image_arrays_rejects_bad_shapes() -> None:
    with pytest.raises(DataError):
        ImageArrays(x=torch.zeros(2, 4, 4, 3), y=torch.zeros(2, dtype=torch.int64), classes=["a"], name="t")
    with pytest.raises(DataError):
        ImageArrays(x=torch.zeros(2, 4, 4, 3, dtype=torch.uint8), y=torch.zeros(3, dtype=torch.int64),
                    classes=["a"], name="t")
    with pytest.raises(DataError, match="labels must lie"):
        ImageArrays(x=torch.zeros(2, 4, 4, 3, dtype=torch.uint8), y=torch.tensor([0, 5]), classes=["a"],
                    name="t")


# --------------------------------------------------------------------------------------------- augment


def _reference_crop_flip(x: torch.Tensor, padding: int, dy: int, dx: int, flip: bool) -> torch.Tensor:
    h, w = x.shape[:2]
    padded = F.pad(x.permute(2, 0, 1), (padding, padding, padding, padding)).permute(1, 2, 0)
    crop = padded[dy:dy + h, dx:dx + w]
    return crop.flip(1) if flip else crop


def test_random_crop_flip_shape_dtype_and_determinism() -> None:
    x = _arrays(64, size=16).x
    out1 = random_crop_flip(x, padding=4, generator=torch.Generator().manual_seed(7))
    out2 = random_crop_flip(x, padding=4, generator=torch.Generator().manual_seed(7))
    out3 = random_crop_flip(x, padding=4, generator=torch.Generator().manual_seed(8))
    assert out1.shape == x.shape and out1.dtype == torch.uint8 and out1.is_contiguous()
    assert torch.equal(out1, out2)
    assert not torch.equal(out1, out3)


def test_random_crop_flip_is_a_crop_of_the_padded_input() -> None:
    p = 4
    x = _arrays(6, size=12).x
    out = random_crop_flip(x, padding=p, generator=torch.Generator().manual_seed(3))
    for i in range(len(x)):
        candidates = [
            (dy, dx, fl) for dy in range(2 * p + 1) for dx in range(2 * p + 1) for fl in (False, True)
            if torch.equal(_reference_crop_flip(x[i], p, dy, dx, fl), out[i])
        ]
        assert candidates, f"output {i} is not a (flipped) crop of the padded input"


def test_random_crop_flip_flips_about_half_and_offsets_cover_range() -> None:
    n, w, p = 2000, 8, 2
    # Every pixel of the source image is distinct and non-zero, so each output identifies its (dy, dx, flip).
    img = (torch.arange(w * w, dtype=torch.int64) + 1).view(w, w, 1).expand(w, w, 3).to(torch.uint8)
    x = img.expand(n, w, w, 3).contiguous()
    out = random_crop_flip(x, padding=p, generator=torch.Generator().manual_seed(0))
    params = [(dy, dx, fl) for dy in range(2 * p + 1) for dx in range(2 * p + 1) for fl in (False, True)]
    candidates = torch.stack([_reference_crop_flip(img, p, *prm) for prm in params])
    match = (out[:, None] == candidates[None]).flatten(2).all(2)  # (n, len(params))
    assert bool((match.sum(1) == 1).all()), "every output is exactly one crop/flip of its padded input"
    chosen = [params[i] for i in match.float().argmax(1).tolist()]
    assert {dy for dy, _, _ in chosen} == set(range(2 * p + 1))
    assert {dx for _, dx, _ in chosen} == set(range(2 * p + 1))
    assert 0.45 < sum(fl for _, _, fl in chosen) / n < 0.55


def test_random_crop_flip_padding_zero_only_flips() -> None:
    x = _arrays(50, size=8).x
    out = random_crop_flip(x, padding=0, generator=torch.Generator().manual_seed(1))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(2)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 0 < int(mirrored.sum()) < 50


# --------------------------------------------------------------------------------------------- loader


def _ids(xb: torch.Tensor) -> list[int]:
    """Row ids encoded in pixel (0, 0, channel 0) by _arrays (only valid without augmentation)."""
    return (xb[:, 0, 0, 0] * 255).round().to(torch.int64).tolist()


def _collect(loader: BatchLoader, epoch: int, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader.batches(start_step=start))


def test_loader_batches_are_float_nchw_and_cover_the_epoch() -> None:
    data = _arrays(40)
    loader = BatchLoader(data, batch_size=8, augment=False, seed=1)
    batches = _collect(loader, 0)
    assert len(batches) == len(loader) == 5
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (8, 3, 8, 8) and x.is_contiguous()
    assert y.dtype == torch.int64 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    ids = [i for xb, _ in batches for i in _ids(xb)]
    assert sorted(ids) == list(range(40)) and ids != list(range(40))
    for xb, yb in batches:
        assert yb.tolist() == [i % 4 for i in _ids(xb)]
    x_cl, _ = next(iter(BatchLoader(data, batch_size=8, channels_last=True)))
    assert x_cl.is_contiguous(memory_format=torch.channels_last)


def test_loader_epoch_determinism_and_epochs_differ() -> None:
    data = _arrays(40)
    a = _collect(BatchLoader(data, batch_size=8, seed=5), 3)
    b = _collect(BatchLoader(data, batch_size=8, seed=5), 3)
    c = _collect(BatchLoader(data, batch_size=8, seed=5), 4)
    d = _collect(BatchLoader(data, batch_size=8, seed=6), 3)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True))
    assert not torch.equal(a[0][0], c[0][0])
    assert not torch.equal(a[0][0], d[0][0])


def test_loader_drop_last_lengths() -> None:
    data = _arrays(10)
    assert len(BatchLoader(data, batch_size=4, drop_last=True)) == 2
    loader = BatchLoader(data, batch_size=4, drop_last=False, shuffle=False, augment=False)
    assert len(loader) == 3
    sizes = [len(y) for _, y in loader]
    assert sizes == [4, 4, 2]
    assert [i for xb, _ in loader for i in _ids(xb)] == list(range(10))
    with pytest.raises(UsageError, match="larger than the data set"):
        BatchLoader(data, batch_size=11, drop_last=True)
    assert len(BatchLoader(data, batch_size=11, drop_last=False)) == 1


def test_loader_ddp_split_union_equals_single_process_batch() -> None:
    data = _arrays(40)
    kw = dict(batch_size=8, seed=2, augment=True)
    single = _collect(BatchLoader(data, **kw), 1)
    ranks = [_collect(BatchLoader(data, rank=r, world_size=2, **kw), 1) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for step, (xs, ys) in enumerate(single):
        (x0, y0), (x1, y1) = ranks[0][step], ranks[1][step]
        assert x0.shape[0] == x1.shape[0] == 4
        assert torch.equal(x0, xs[0::2]) and torch.equal(x1, xs[1::2])
        assert torch.equal(y0, ys[0::2]) and torch.equal(y1, ys[1::2])
    with pytest.raises(UsageError, match="divisible"):
        BatchLoader(data, batch_size=9, world_size=2, rank=0)


def test_loader_mid_epoch_resume_matches_uninterrupted_epoch() -> None:
    data = _arrays(40)
    full = _collect(BatchLoader(data, batch_size=8, seed=4), 2)
    resumed_loader = BatchLoader(data, batch_size=8, seed=4)  # a fresh process: nothing consumed before
    resumed_loader.set_epoch(2)
    resumed = list(resumed_loader.skip(3))
    assert len(resumed) == len(full) - 3
    for (xf, yf), (xr, yr) in zip(full[3:], resumed, strict=True):
        assert torch.equal(xf, xr) and torch.equal(yf, yr)
    # skip is one-shot: the next pass is a whole epoch again.
    assert len(list(resumed_loader)) == len(full)
    with pytest.raises(UsageError):
        resumed_loader.skip(99)


# --------------------------------------------------------------------------------------------- npz


def _save(path: Path, **arrays: object) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_valid_file_and_folder(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    f = _save(tmp_path / "a.npz", x=x, y=np.array([0, 1, 2, 0, 1, 2], dtype=np.uint8))
    data = load_dataset("npz", "train", path=f)
    assert data.x.dtype == torch.uint8 and data.y.dtype == torch.int64
    assert np.array_equal(data.x.numpy(), x) and data.classes == ["0", "1", "2"]
    assert load_dataset("npz", "test", path=f, num_classes=5).classes == ["0", "1", "2", "3", "4"]

    folder = tmp_path / "splits"
    folder.mkdir()
    _save(folder / "test.npz", x=x[:2], y=np.array([1, 0]), classes=np.array(["cat", "dog"]))
    data = load_dataset("npz", "test", path=folder)
    assert len(data) == 2 and data.classes == ["cat", "dog"]
    with pytest.raises(DataError, match="no train.npz"):
        load_dataset("npz", "train", path=folder)


def test_npz_converts_float_and_grayscale(tmp_path: Path) -> None:
    xf = np.random.default_rng(1).random((4, 5, 5, 3), dtype=np.float32)
    data = load_dataset("npz", "train", path=_save(tmp_path / "f.npz", x=xf, y=np.arange(4)))
    assert np.array_equal(data.x.numpy(), np.rint(xf.astype(np.float64) * 255).astype(np.uint8))
    gray = np.random.default_rng(2).integers(0, 256, (3, 5, 5), dtype=np.uint8)
    data = load_dataset("npz", "train", path=_save(tmp_path / "g.npz", x=gray, y=np.arange(3)))
    assert data.x.shape == (3, 5, 5, 3) and torch.equal(data.x[..., 0], data.x[..., 2])


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((2, 4, 4, 3), np.int32), "y": np.zeros(2, np.int64)}, "must be uint8"),
        ({"x": np.full((2, 4, 4, 3), 2.0, np.float32), "y": np.zeros(2, np.int64)}, r"in \[0, 1\]"),
        ({"x": np.zeros((2, 4, 4, 3), np.uint8), "y": np.zeros(3, np.int64)}, "2 images but 3 labels"),
        ({"x": np.zeros((2, 4, 4, 3), np.uint8)}, "lacks array"),
        ({"images": np.zeros((2, 4, 4, 3), np.uint8), "y": np.zeros(2)}, "lacks array"),
        ({"x": np.zeros((2, 3, 4, 4), np.uint8), "y": np.zeros(2, np.int64)}, "NCHW"),
        ({"x": np.zeros((2, 4, 4, 3), np.uint8), "y": np.array([0, -1])}, ">= 0"),
        ({"x": np.zeros((2, 4, 4, 3), np.uint8), "y": np.array([0.0, 1.0])}, "must be integers"),
        ({"x": np.zeros((2, 4, 4, 3), np.uint8), "y": np.array([0, 1]), "classes": np.array(["a"])},
         "out of range"),
    ],
)
def test_npz_validation_errors(tmp_path: Path, arrays: dict, message: str) -> None:
    f = _save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset("npz", "train", path=f)


def test_npz_refuses_pickled_object_arrays(tmp_path: Path) -> None:
    x = np.empty(2, dtype=object)
    x[0], x[1] = np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8)
    f = _save(tmp_path / "obj.npz", x=x, y=np.zeros(2, np.int64))
    with pytest.raises(DataError, match="pickled"):
        load_dataset("npz", "train", path=f)
    plain_pickle = tmp_path / "p.npz"
    plain_pickle.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(DataError, match="refuses") as info:
        load_dataset("npz", "train", path=plain_pickle)
    assert "allow_pickle=" not in str(info.value)


def test_npz_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_dataset("npz", "train", path=tmp_path / "nope.npz")
    with pytest.raises(UsageError, match="needs a path"):
        load_dataset("npz", "train")


# --------------------------------------------------------------------------------------------- cifar


def _fake_cifar_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 10)):
        np.savez(root / f"{split}.npz", x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                 y=(np.arange(n) % 10).astype(np.uint8))


def test_cifar10_from_npz_folder(tmp_path: Path) -> None:
    _fake_cifar_folder(tmp_path)
    train = load_dataset("cifar10", "train", root=tmp_path, download=False)
    test = load_dataset("cifar10", "test", root=tmp_path)
    assert (len(train), len(test)) == (20, 10)
    assert train.classes == list(CIFAR10_CLASSES) and train.name == "cifar10"
    assert len(CIFAR10_CLASSES) == 10 and len(CIFAR100_CLASSES) == 100 and len(set(CIFAR100_CLASSES)) == 100
    assert load_dataset("cifar100", "test", root=tmp_path).classes == list(CIFAR100_CLASSES)


def test_cifar10_folder_with_wrong_image_size(tmp_path: Path) -> None:
    np.savez(tmp_path / "test.npz", x=np.zeros((2, 8, 8, 3), np.uint8), y=np.zeros(2, np.uint8))
    with pytest.raises(DataError, match="32x32x3"):
        load_dataset("cifar10", "test", root=tmp_path)
    with pytest.raises(DataError, match="no train.npz"):
        load_dataset("cifar10", "train", root=tmp_path)


def test_cifar10_download_failure_is_actionable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match="--data-root") as info:
        load_dataset("cifar10", "train", root=tmp_path / "empty")
    message = str(info.value)
    assert "\n" not in message and "cifar-10-batches-py" in message and "npz:PATH" in message


def test_default_root_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rkd.data import default_data_root

    monkeypatch.setenv("RKD_DATA_ROOT", str(tmp_path))
    assert default_data_root() == tmp_path
    _fake_cifar_folder(tmp_path)
    assert len(load_dataset("cifar10", "test")) == 10


def _shared_cifar10() -> Path | None:
    for folder in (Path("/work/shared/data/cifar10"), REPO_ROOT.parent / "shared" / "data" / "cifar10"):
        if (folder / "test.npz").is_file():
            return folder
    return None


@pytest.mark.slow
def test_real_cifar10_test_split() -> None:
    folder = _shared_cifar10()
    if folder is None:
        pytest.skip("no offline CIFAR-10 copy at /work/shared/data/cifar10 or ../shared/data/cifar10")
    data = load_dataset("cifar10", "test", root=folder, download=False)
    assert len(data) == 10_000 and data.x.shape == (10_000, 32, 32, 3)
    assert torch.bincount(data.y).tolist() == [1000] * 10
    mean, _ = data.channel_mean_std()
    assert mean == pytest.approx([0.4942, 0.4851, 0.4504], abs=1e-3)


# --------------------------------------------------------------------------------------------- imagefolder


def test_imagefolder_loads_and_resizes(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, classes in (("train", ("bird", "cat", "dog")), ("test", ("cat", "dog"))):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(2):
                img = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(img).save(tmp_path / split / c / f"{i}.png")
    (tmp_path / "test" / "cat" / "notes.txt").write_text("not an image")
    train = load_dataset("imagefolder", "train", path=tmp_path, image_size=16)
    test = load_dataset("imagefolder", "test", path=str(tmp_path), image_size=16)
    assert train.x.shape == (6, 16, 16, 3) and train.classes == ["bird", "cat", "dog"]
    assert test.classes == train.classes and test.y.tolist() == [1, 1, 2, 2]  # labels agree with train
    direct = load_dataset("imagefolder", "test", path=tmp_path / "train", image_size=16)
    assert torch.equal(direct.x, train.x)
    with pytest.raises(DataError, match="not found"):
        load_dataset("imagefolder", "train", path=tmp_path / "missing")


# --------------------------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_splits_differ() -> None:
    a = load_dataset("synthetic", "train", n=32, seed=3)
    b = load_dataset("synthetic", "train", n=32, seed=3)
    t = load_dataset("synthetic", "test", n=32, seed=3)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and not torch.equal(a.x, t.x)
    assert (len(load_dataset("synthetic", "train")), len(load_dataset("synthetic", "test"))) == (256, 128)
    assert torch.bincount(a.y, minlength=10).tolist() == [4, 4] + [3] * 8  # balanced


def test_synthetic_is_learnable_by_a_tiny_cnn() -> None:
    torch.manual_seed(0)
    train = load_dataset("synthetic", "train", n=512)
    test = load_dataset("synthetic", "test")
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loader = BatchLoader(train, batch_size=64, seed=0, augment=True)
    for epoch in range(8):
        loader.set_epoch(epoch)
        for x, y in loader:
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = (net(test.to_float()).argmax(1) == test.y).float().mean().item()
    assert acc > 0.9


# --------------------------------------------------------------------------------------------- subsets


def test_select_indices_and_sha256() -> None:
    assert select_indices(10, 3).tolist() == [0, 1, 2]
    assert select_indices(5, None).tolist() == [0, 1, 2, 3, 4]
    r1 = select_indices(1000, 50, seed=1, mode="random")
    r2 = select_indices(1000, 50, seed=1, mode="random")
    r3 = select_indices(1000, 50, seed=2, mode="random")
    assert torch.equal(r1, r2) and not torch.equal(r1, r3)
    assert r1.dtype == torch.int64 and r1.tolist() == sorted(set(r1.tolist())) and int(r1.max()) < 1000
    assert indices_sha256(r1) == indices_sha256(r2.numpy()) == indices_sha256(r2.tolist())
    assert indices_sha256(r1) != indices_sha256(r3)
    import hashlib

    assert indices_sha256([1, 2]) == hashlib.sha256(np.array([1, 2], "<i8").tobytes()).hexdigest()
    with pytest.raises(UsageError, match="only 10 exist"):
        select_indices(10, 11)
    with pytest.raises(UsageError, match="did you mean 'random'"):
        select_indices(10, 5, mode="randon")


def test_split_holdout_is_disjoint_and_seeded() -> None:
    data = _arrays(40)
    train, held = split_holdout(data, 10, seed=0)
    ids_train, ids_held = set(_ids(train.to_float())), set(_ids(held.to_float()))
    assert len(train) == 30 and len(held) == 10
    assert ids_train.isdisjoint(ids_held) and ids_train | ids_held == set(range(40))
    _, held_again = split_holdout(data, 10, seed=0)
    _, held_other = split_holdout(data, 10, seed=1)
    assert torch.equal(held.x, held_again.x) and not torch.equal(held.x, held_other.x)
    with pytest.raises(UsageError):
        split_holdout(data, 40, seed=0)


# --------------------------------------------------------------------------------------------- names


def test_parse_data_arg() -> None:
    assert parse_data_arg("cifar10") == ("cifar10", {})
    assert parse_data_arg("synthetic") == ("synthetic", {})
    assert parse_data_arg("npz:/path/x.npz") == ("npz", {"path": "/path/x.npz"})
    assert parse_data_arg("imagefolder:/dir") == ("imagefolder", {"path": "/dir"})
    assert parse_data_arg("synthetic:n=64,noise=0.2") == ("synthetic", {"n": 64, "noise": 0.2})
    with pytest.raises(UsageError, match="did you mean 'cifar10'"):
        parse_data_arg("cifar1O")
    with pytest.raises(UsageError, match="did you mean 'num_classes'"):
        parse_data_arg("synthetic:num_clases=3")
    with pytest.raises(UsageError, match="--data-root"):
        parse_data_arg("cifar10:/some/dir")
    with pytest.raises(UsageError):
        parse_data_arg("npz:")


def test_unknown_dataset_split_and_option() -> None:
    assert {"cifar10", "cifar100", "npz", "imagefolder", "synthetic"} <= set(DATASETS.names())
    with pytest.raises(UsageError, match="did you mean 'synthetic'"):
        load_dataset("synthetc", "train")
    with pytest.raises(UsageError, match="did you mean 'test'"):
        load_dataset("synthetic", "tset")
    with pytest.raises(UsageError, match="did you mean 'image_size'"):
        load_dataset("synthetic", "train", imagesize=16)
