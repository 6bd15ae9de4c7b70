"""The ImageNet-form architectures (``tv_*``, torchvision's modules): shapes at camera sizes, torchvision
layout, ONNX export, and foreign state_dicts in torchvision and RobustBench layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rkd.errors import CheckpointError
from rkd.models import (
    CIFAR10_MEAN,
    IMAGENET_MEAN,
    IMAGENET_STD,
    create_model,
    load_checkpoint,
    load_foreign_checkpoint,
    save_checkpoint,
)
from rkd.models.imagenet import IMAGENET_MODELS
from rkd.testing import TINY_CONFIGS

NAMES = sorted(IMAGENET_MODELS)


@pytest.mark.parametrize("name", NAMES)
def test_any_input_size_from_32(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **TINY_CONFIGS[name]).eval()
    with torch.no_grad():
        for h, w in ((32, 32), (64, 64), (96, 80)):
            out = model(torch.rand(2, 3, h, w))
            assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_imagenet_forms_default_to_imagenet_statistics_for_any_class_count() -> None:
    assert create_model("tv_resnet18", num_classes=10, width=0.125).spec.mean == IMAGENET_MEAN
    assert create_model("tv_mobilenet_v2", num_classes=100, width=0.25).spec.std == IMAGENET_STD
    assert create_model("resnet18", num_classes=10, width=0.125).spec.mean == CIFAR10_MEAN  # CIFAR forms unchanged


@pytest.mark.parametrize("name,builder", [("tv_mobilenet_v2", "mobilenet_v2"), ("tv_resnet18", "resnet18"),
                                          ("tv_resnet50", "resnet50")])
def test_width_one_is_torchvision_exactly(name: str, builder: str) -> None:
    import torchvision

    ours = create_model(name, num_classes=1000).net.state_dict()
    theirs = getattr(torchvision.models, builder)(weights=None).state_dict()
    assert ours.keys() == theirs.keys()
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_scaled_resnet_keeps_torchvision_names_and_stride_2_stem() -> None:
    import torchvision

    net = create_model("tv_resnet18", width=0.25).net
    assert net.state_dict().keys() == torchvision.models.resnet18(weights=None).state_dict().keys()
    assert net.conv1.stride == (2, 2) and net.conv1.out_channels == 16 and net.fc.in_features == 128


def test_mobilenet_width_mult_is_torchvisions() -> None:
    net = create_model("tv_mobilenet_v2", width=0.5).net
    assert net.features[0][0].out_channels == 16 and net.features[0][0].stride == (2, 2)


@pytest.mark.parametrize("name", ["tv_mobilenet_v2", "tv_resnet18"])
def test_onnx_export_at_64_with_dynamic_batch_matches_onnxruntime(tmp_path: Path, name: str) -> None:
    pytest.importorskip("onnxruntime")
    from rkd.deploy.onnx_export import compare_onnx, export_onnx

    torch.manual_seed(0)
    model = create_model(name, num_classes=4, **TINY_CONFIGS[name]).eval()
    path = export_onnx(model, tmp_path / "model.onnx", image_size=64)
    parity = compare_onnx(model, path, torch.rand(5, 3, 64, 64))  # batch 5 != the traced 2
    assert parity["n"] == 5 and parity["max_abs_diff"] < 1e-3 and parity["top1_agreement"] == 1.0


def test_rkd_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("tv_mobilenet_v2", num_classes=3, width=0.25).eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors", {"data": {"dataset": "imagefolder"}})
    back, _ = load_checkpoint(path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    assert back.spec == model.spec


def test_foreign_torchvision_layout_gets_imagenet_normalisation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = create_model("tv_resnet18", num_classes=6, width=0.125).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(src.net.state_dict(), path)  # a plain torchvision state_dict: keys conv1.weight, fc.bias, ...
    model = load_foreign_checkpoint(path, model="tv_resnet18", num_classes=6, width=0.125)
    assert model.spec.mean == IMAGENET_MEAN and model.spec.std == IMAGENET_STD
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))


@pytest.mark.parametrize("prefix", ["", "module."])
def test_foreign_robustbench_layout_keeps_its_normalisation(tmp_path: Path, prefix: str) -> None:
    torch.manual_seed(0)
    src = create_model("tv_resnet50", num_classes=4, width=0.0625).net.eval()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    # RobustBench's normalize_model: Sequential(normalize=ImageNormalizer(mean, std), model=net)
    state = {f"{prefix}normalize.mean": torch.tensor(mean).view(1, 3, 1, 1),
             f"{prefix}normalize.std": torch.tensor(std).view(1, 3, 1, 1)}
    state |= {f"{prefix}model.{k}": v for k, v in src.state_dict().items()}
    path = tmp_path / "Salman2020Do_R50.pt"
    torch.save(state, path)
    model = load_foreign_checkpoint(path, model="tv_resnet50", num_classes=4, width=0.0625)
    assert model.spec.mean == pytest.approx(mean) and model.spec.std == pytest.approx(std)
    x = torch.rand(2, 3, 64, 64)
    ref = src((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref)
    # and it saves and reloads as an rkd checkpoint with that normalisation
    back, _ = load_checkpoint(save_checkpoint(model, tmp_path / "t.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(back(x), ref)


def test_foreign_half_a_normalisation_is_refused(tmp_path: Path) -> None:
    src = create_model("tv_resnet18", num_classes=4, width=0.125).net
    state = {"normalize.mean": torch.zeros(1, 3, 1, 1)} | {f"model.{k}": v for k, v in src.state_dict().items()}
    torch.save(state, tmp_path / "half.pt")
    with pytest.raises(CheckpointError, match="normalize.mean and normalize.std"):
        load_foreign_checkpoint(tmp_path / "half.pt", model="tv_resnet18", num_classes=4, width=0.125)


def test_foreign_wrong_class_count_is_a_checkpoint_error(tmp_path: Path) -> None:
    src = create_model("tv_mobilenet_v2", num_classes=4, width=0.25).net
    torch.save(src.state_dict(), tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_foreign_checkpoint(tmp_path / "m.pt", model="tv_mobilenet_v2", num_classes=5, width=0.25)
