"""Models: the registry, the CIFAR and ImageNet-form architectures (normalisation inside) and checkpoints.

Importing this package registers every architecture: the CIFAR forms ``resnet18``, ``preact_resnet18``,
``mobilenet_v2``, ``wide_resnet``; the ImageNet forms from torchvision ``tv_mobilenet_v2``, ``tv_resnet18``,
``tv_resnet50``, ``tv_wide_resnet50_2``; and ``tiny_cnn`` (tests).
"""

from __future__ import annotations

from rkd.models import imagenet, mobilenet_v2, preact_resnet, resnet, tiny, wide_resnet  # noqa: F401  (register)
from rkd.models.checkpoint import load_checkpoint, load_foreign_checkpoint, save_checkpoint
from rkd.models.classifier import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODELS,
    Classifier,
    ModelSpec,
    Normalize,
    create_model,
    list_models,
)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODELS",
    "Classifier",
    "ModelSpec",
    "Normalize",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_foreign_checkpoint",
    "save_checkpoint",
]
