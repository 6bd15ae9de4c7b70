"""ImageNet-form architectures from torchvision, for camera-sized inputs (96-224 px; any side >= 32).

``tv_mobilenet_v2``, ``tv_resnet18`` (students) and ``tv_resnet50``, ``tv_wide_resnet50_2`` (teachers) are
torchvision's own modules (``torchvision.models.mobilenet_v2``, ``torchvision.models.resnet18`` ...): stride-2
stem (ResNet: 7x7 conv + max-pool), adaptive average pooling, so the state_dict keys are torchvision's and its
files (or RobustBench's ImageNet ones) load into ``Classifier.net``. They are always built with
``weights=None``: nothing is downloaded; pretrained weights come from a local file
(:func:`rkd.models.load_foreign_checkpoint`). torchvision is imported inside the factories, so ``import rkd``
stays light. Their normalisation defaults to the ImageNet statistics for any number of classes.

``width`` scales every channel count: MobileNetV2 through torchvision's ``width_mult``; the ResNets by scaling
the base widths 64/128/256/512 (torchvision's ResNet has no such knob; at width 1.0 the network is exactly
torchvision's).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from rkd.models.classifier import IMAGENET_MEAN, IMAGENET_STD, MODELS, register_default_stats
from rkd.models.resnet import scaled

#: The ImageNet-form names, each with the torchvision builder it follows.
IMAGENET_MODELS: dict[str, str] = {
    "tv_mobilenet_v2": "torchvision.models.mobilenet_v2",
    "tv_resnet18": "torchvision.models.resnet18",
    "tv_resnet50": "torchvision.models.resnet50",
    "tv_wide_resnet50_2": "torchvision.models.wide_resnet50_2",
}

# block kind, blocks per stage, width_per_group (torchvision's resnet18/resnet50/wide_resnet50_2 builders).
_RESNETS: dict[str, tuple[str, tuple[int, int, int, int], int]] = {
    "tv_resnet18": ("basic", (2, 2, 2, 2), 64),
    "tv_resnet50": ("bottleneck", (3, 4, 6, 3), 64),
    "tv_wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), 128),
}

for _name in IMAGENET_MODELS:
    register_default_stats(_name, IMAGENET_MEAN, IMAGENET_STD)


def _torchvision_resnet(kind: str, num_classes: int, width: float) -> nn.Module:
    """torchvision's ``ResNet`` for ``kind``, its base widths 64/128/256/512 scaled by ``width``.

    Follows ``torchvision.models.resnet.ResNet.__init__`` (same modules, names and initialisation), with
    ``inplanes`` and the stage widths scaled; ``forward`` is torchvision's.
    """
    from torchvision.models import resnet as tvr

    block_kind, layers, width_per_group = _RESNETS[kind]
    block: Any = tvr.BasicBlock if block_kind == "basic" else tvr.Bottleneck
    if width == 1.0:
        return tvr.ResNet(block, list(layers), num_classes=num_classes, width_per_group=width_per_group)
    widths = [scaled(c, width) for c in (64, 128, 256, 512)]
    net = tvr.ResNet.__new__(tvr.ResNet)
    nn.Module.__init__(net)
    net._norm_layer = nn.BatchNorm2d
    net.inplanes = widths[0]
    net.dilation = 1
    net.groups = 1
    net.base_width = width_per_group
    net.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(widths[0])
    net.relu = nn.ReLU(inplace=True)
    net.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    net.layer1 = net._make_layer(block, widths[0], layers[0])
    net.layer2 = net._make_layer(block, widths[1], layers[1], stride=2)
    net.layer3 = net._make_layer(block, widths[2], layers[2], stride=2)
    net.layer4 = net._make_layer(block, widths[3], layers[3], stride=2)
    net.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    net.fc = nn.Linear(widths[3] * block.expansion, num_classes)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    return net


@MODELS.register("tv_mobilenet_v2")
def tv_mobilenet_v2(num_classes: int = 1000, width: float = 1.0) -> nn.Module:
    """MobileNetV2, ImageNet form: ``torchvision.models.mobilenet_v2(weights=None, width_mult=width)``.

    Stride-2 3x3 stem, torchvision's inverted-residual settings, dropout 0.2 before the ``classifier``;
    3,504,872 parameters at width 1.0 and 1000 classes.
    """
    from torchvision.models import mobilenet_v2

    return mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width)


@MODELS.register("tv_resnet18")
def tv_resnet18(num_classes: int = 1000, width: float = 1.0) -> nn.Module:
    """ResNet-18, ImageNet form (``torchvision.models.resnet18(weights=None)``); 11,689,512 parameters at width
    1.0 and 1000 classes."""
    return _torchvision_resnet("tv_resnet18", num_classes, width)


@MODELS.register("tv_resnet50")
def tv_resnet50(num_classes: int = 1000, width: float = 1.0) -> nn.Module:
    """ResNet-50, ImageNet form (``torchvision.models.resnet50(weights=None)``), a teacher; 25,557,032
    parameters at width 1.0 and 1000 classes."""
    return _torchvision_resnet("tv_resnet50", num_classes, width)


@MODELS.register("tv_wide_resnet50_2")
def tv_wide_resnet50_2(num_classes: int = 1000, width: float = 1.0) -> nn.Module:
    """Wide ResNet-50-2, ImageNet form (``torchvision.models.wide_resnet50_2(weights=None)``), a teacher;
    68,883,240 parameters at width 1.0 and 1000 classes."""
    return _torchvision_resnet("tv_wide_resnet50_2", num_classes, width)
