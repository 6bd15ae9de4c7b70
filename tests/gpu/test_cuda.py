"""CUDA paths: on-device data and augmentation, bf16 training, attacks and AutoAttack on the GPU.

Marked ``cuda``: skipped on machines without a GPU (CI). Run with ``pytest tests/gpu`` on a GPU machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rkd.config import ThreatConfig, TrainConfig
from rkd.data import BatchLoader, load_dataset, split_holdout
from rkd.distill.pgd_at import PgdAt
from rkd.models import create_model, load_checkpoint
from rkd.train import fit
from rkd.verify.suite import evaluate_robustness

pytestmark = pytest.mark.cuda


def test_batches_live_and_are_augmented_on_the_gpu() -> None:
    data = load_dataset("synthetic", "train", n=256)
    loader = BatchLoader(data, batch_size=64, device="cuda", channels_last=True)
    loader.set_epoch(0)
    x, y = next(iter(loader))
    assert x.is_cuda and y.is_cuda and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_bf16_training_on_gpu_writes_a_checkpoint(tmp_path: Path) -> None:
    full = load_dataset("synthetic", "train", n=256, num_classes=4)
    train, hold = split_holdout(full, 64, 0)
    method = PgdAt(create_model("resnet18", num_classes=4, width=0.25), steps=3)
    cfg = TrainConfig(epochs=2, lr=0.05, eval_n=64, eval_pgd_steps=5, amp="auto", channels_last="auto")
    res = fit(method, train, hold, cfg, run_dir=tmp_path, device="cuda", batch_size=64, threat=ThreatConfig(),
              fingerprint="gpu")
    model, _ = load_checkpoint(res.checkpoint)
    assert res.history[-1]["clean_acc"] > 0.5  # the toy problem is learnable in two epochs


def test_suite_with_autoattack_on_gpu() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", width=0.25).cuda().eval()
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    res = evaluate_robustness(model, x, y, attacks="pgd10,aa-custom:apgd-ce", eps=8 / 255, device="cuda")
    assert res.outcomes["aa-custom:apgd-ce"].correct.sum() <= res.outcomes["clean"].correct.sum()
