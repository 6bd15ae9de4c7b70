"""Test configuration: hardware markers auto-skip, shared fixtures.

Markers (declared in pyproject.toml): ``cuda`` (needs a CUDA GPU), ``tensorrt`` (needs ``import tensorrt``),
``slow`` (real-data or installed-wheel integration tests; seconds to a minute on 2 cores). The development copy of
CIFAR-10 is looked up at ``$RKD_TEST_CIFAR10`` or ``../shared/data/cifar10`` beside the repository; tests that need
it skip cleanly when it is absent.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_cuda = torch.cuda.is_available()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs tensorrt (NVIDIA's index / containers)"))


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 0)) or min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def cifar10_root() -> Path:
    """The folder holding the development CIFAR-10 {train,test}.npz, or skip."""
    env = os.environ.get("RKD_TEST_CIFAR10")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data" / "cifar10"]:
        if (cand / "test.npz").is_file() and (cand / "train.npz").is_file():
            return cand
    pytest.skip("development CIFAR-10 (../shared/data/cifar10) not present")
