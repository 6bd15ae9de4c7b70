"""Model registry, architectures (shapes, key names, parameter counts) and the Normalize-inside Classifier."""

from __future__ import annotations

import subprocess
import sys
import warnings
from typing import Any

import pytest
import torch
from torch import nn

from rkd.errors import CheckpointError, UsageError
from rkd.models import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    Classifier,
    ModelSpec,
    Normalize,
    create_model,
    list_models,
)
from rkd.testing import TINY_CONFIGS

# The smallest configuration of each registered model, to keep the CPU tests fast.
TINY = TINY_CONFIGS


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_every_registered_model_has_a_tiny_config() -> None:
    assert sorted(TINY) == list_models()


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("num_classes", [10, 7])
def test_logits_shape(name: str, num_classes: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, **TINY[name]).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_channels_last_matches_and_backward_gives_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, **TINY[name]).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    model = model.to(memory_format=torch.channels_last)
    xcl = x.clone().to(memory_format=torch.channels_last).requires_grad_(True)
    out = model(xcl)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)

    model.train()
    out = model(xcl)
    out.logsumexp(dim=1).sum().backward()
    assert xcl.grad is not None and xcl.grad.abs().sum() > 0
    for pname, p in model.net.named_parameters():
        assert p.grad is not None, f"no gradient for {pname}"
    assert model.net.state_dict().keys() == create_model(name, **TINY[name]).net.state_dict().keys()


def test_normalize_is_inside_the_classifier() -> None:
    torch.manual_seed(0)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    model = create_model("resnet18", width=0.125, mean=mean, std=std).eval()
    x = torch.rand(2, 3, 32, 32)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net((x - m) / s))
        # and it is not the identity: raw input gives different logits
        assert not torch.allclose(model(x), model.net(x))
    assert isinstance(model.normalize, Normalize)
    assert model.normalize.mean.shape == (1, 3, 1, 1) and model.normalize.std.shape == (1, 3, 1, 1)
    assert {"normalize.mean", "normalize.std"} <= set(model.state_dict())


def test_default_stats_follow_num_classes() -> None:
    c10 = create_model("resnet18", width=0.125, num_classes=10)
    c100 = create_model("resnet18", width=0.125, num_classes=100)
    other = create_model("resnet18", width=0.125, num_classes=43)
    assert c10.spec.mean == CIFAR10_MEAN and c10.spec.std == CIFAR10_STD
    assert c100.spec.mean == CIFAR100_MEAN and c100.spec.std == CIFAR100_STD
    assert other.spec.mean == pytest.approx((0.485, 0.456, 0.406))
    torch.testing.assert_close(c100.normalize.std.flatten(), torch.tensor(CIFAR100_STD))


def test_parameter_counts_match_the_literature() -> None:
    # kuangliu/pytorch-cifar at 10 classes; TRADES WRN-34-10 without its unused sub_block1.
    assert n_params(create_model("resnet18").net) == 11_173_962
    assert n_params(create_model("mobilenet_v2").net) == 2_296_922
    assert n_params(create_model("preact_resnet18").net) == 11_172_170
    assert n_params(create_model("wide_resnet", depth=16, widen_factor=4).net) == 2_748_890


def test_mobilenet_width_one_has_kuangliu_channels_and_width_scales() -> None:
    net = create_model("mobilenet_v2").net
    outs = [blk.conv3.out_channels for blk in net.layers]
    assert outs == [16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320]
    assert net.conv1.out_channels == 32 and net.conv2.out_channels == 1280
    half = create_model("mobilenet_v2", width=0.5).net
    assert half.conv1.out_channels == 16 and half.layers[-1].conv3.out_channels == 160
    assert half.conv2.out_channels == 1280  # kept at 1280 for width <= 1 (torchvision)
    wide = create_model("mobilenet_v2", width=1.4).net
    assert wide.conv2.out_channels == 1792 and wide.conv1.out_channels == 48


def test_resnet_width_scales_channels() -> None:
    net = create_model("resnet18", width=0.25).net
    assert [net.layer1[0].conv1.out_channels, net.layer2[0].conv1.out_channels,
            net.layer3[0].conv1.out_channels, net.layer4[0].conv1.out_channels] == [16, 32, 64, 128]
    assert net.linear.in_features == 128
    assert create_model("resnet18", width=0.001).net.conv1.out_channels == 1


def test_state_dict_keys_match_published_code() -> None:
    rn = create_model("resnet18", width=0.125).net.state_dict()
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.shortcut.0.weight",
                "layer2.0.shortcut.1.running_var", "layer4.1.bn2.weight", "linear.weight", "linear.bias"):
        assert key in rn
    assert not any(k.startswith("layer1.0.shortcut") for k in rn)

    pa = create_model("preact_resnet18", width=0.125).net.state_dict()
    for key in ("conv1.weight", "layer1.0.bn1.weight", "layer2.0.shortcut.0.weight", "bn.weight",
                "linear.weight"):
        assert key in pa
    assert "layer2.0.shortcut.1.weight" not in pa and "bn1.weight" not in pa

    mb = create_model("mobilenet_v2").net.state_dict()
    for key in ("conv1.weight", "bn1.weight", "layers.0.conv1.weight", "layers.0.shortcut.0.weight",
                "layers.16.bn3.weight", "conv2.weight", "bn2.weight", "linear.weight"):
        assert key in mb
    assert "layers.17.conv1.weight" not in mb

    wr = create_model("wide_resnet", depth=10, widen_factor=2).net.state_dict()
    for key in ("conv1.weight", "block1.layer.0.bn1.weight", "block1.layer.0.convShortcut.weight",
                "block2.layer.0.conv2.weight", "block3.layer.0.bn2.running_mean", "bn1.weight", "fc.weight"):
        assert key in wr
    assert not any(k.startswith("sub_block1") for k in wr)


def test_unknown_model_name_suggests_the_closest() -> None:
    with pytest.raises(UsageError, match=r"did you mean 'resnet18'"):
        create_model("resnet19")


@pytest.mark.parametrize(
    ("name", "kwargs", "words"),
    [
        ("resnet18", {"depth": 18}, "does not take depth"),
        ("mobilenet_v2", {"widen_factor": 2}, "does not take widen_factor"),
        ("wide_resnet", {"width": 0.5}, "widen_factor"),
        ("wide_resnet", {"depth": 12}, r"6n\+4"),
        ("resnet18", {"num_classes": 1}, "num_classes"),
        ("resnet18", {"width": 0.0}, "width"),
        ("resnet18", {"mean": (0.5, 0.5, 0.5)}, "both mean and std"),
        ("resnet18", {"mean": (0.5, 0.5, 0.5), "std": (1.0, 0.0, 1.0)}, "std"),
    ],
)
def test_bad_knobs_are_usage_errors(name: str, kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(UsageError, match=words):
        create_model(name, **kwargs)


def test_spec_round_trip_and_unknown_key() -> None:
    model = create_model("wide_resnet", depth=10, widen_factor=1, num_classes=100)
    spec = model.spec
    assert spec == ModelSpec(name="wide_resnet", num_classes=100, depth=10, widen_factor=1)
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["mean"] == list(CIFAR100_MEAN)
    with pytest.raises(CheckpointError, match="widht.*did you mean 'width'"):
        ModelSpec.from_dict({**spec.to_dict(), "widht": 2.0})
    with pytest.raises(CheckpointError, match="num_classes"):
        ModelSpec.from_dict({"name": "resnet18"})


def test_classifier_is_an_nn_module_with_spec() -> None:
    model = create_model("mobilenet_v2", width=0.25, num_classes=100)
    assert isinstance(model, Classifier) and model.num_classes == 100 and model.spec.width == 0.25


def test_onnx_export_matches_torch() -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import io

    torch.manual_seed(0)
    for name in list_models():
        model = create_model(name, **TINY[name]).eval()
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.rand(1, 3, 32, 32),), buf, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "batch"}}, opset_version=17,
                              dynamo=False)
        session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
        x = torch.rand(3, 3, 32, 32)
        (got,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-4)


def test_import_rkd_does_not_import_models() -> None:
    code = "import sys, rkd; sys.exit(1 if 'rkd.models' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
