"""A few tests per area on the GPU: every distillation method's training step, adv_path's one-pass alignment
against its chunked and ``low_memory`` forms, the attacks and AutoAttack, ``rkd verify`` with the torch runtime,
and ONNX export from a model that lives on the GPU.

Marked ``cuda``: skipped on machines without a GPU (CI); ``pytest -m cuda`` runs them on a GPU machine
(``benchmarks/gpu_check.py`` does). ``RKD_CUDA_TEST_DEVICE=cpu`` runs the same tests on the CPU without the
marker, a check of the tests themselves (``benchmarks/gpu_check.py --dry-run`` does).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import typer
from pydantic import TypeAdapter
from typer.testing import CliRunner

from rkd.attacks import cw_inf, fgsm, pgd, run_autoattack
from rkd.cli.verify import verify
from rkd.config import DistillMethodConfig
from rkd.deploy.onnx_export import compare_onnx, export_onnx
from rkd.distill import METHODS, create_method
from rkd.distill.adv_path import AdvPath
from rkd.models import create_model, save_checkpoint

DEVICE = torch.device(os.environ.get("RKD_CUDA_TEST_DEVICE", "cuda"))
pytestmark = [pytest.mark.cuda] if DEVICE.type == "cuda" else []
EPS, ALPHA = 8 / 255, 2 / 255


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """TF32 off for convolutions and matrix products (on by default for cuDNN convolutions): exact fp32."""
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm


def autocast() -> contextlib.AbstractContextManager[object]:
    """The training loop's ``amp: auto``: bf16 autocast on CUDA, none on the CPU."""
    if DEVICE.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return x.to(DEVICE).contiguous(memory_format=torch.channels_last), y.to(DEVICE)


def tiny(name: str = "resnet18", seed: int = 0, **knobs: float) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model(name, num_classes=10, **({"width": 0.125} | knobs))
    return model.to(DEVICE).to(memory_format=torch.channels_last)


# ---- distillation methods ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_trains_one_step_on_the_device(name: str) -> None:
    """One step as the training loop runs it (bf16 autocast on CUDA, channels_last, SGD): finite loss, every
    gradient on the device, the weights move, the teacher does not."""
    cfg = TypeAdapter(DistillMethodConfig).validate_python({"name": name, "steps": 2})
    student = tiny(seed=0)
    teacher = tiny(seed=1).eval() if METHODS.get(name).needs_teacher else None
    teacher_before = copy.deepcopy(teacher.state_dict()) if teacher is not None else None
    method = create_method(cfg, student=student, teacher=teacher)
    if hasattr(method, "set_epoch"):
        method.set_epoch(getattr(cfg, "warmup_epochs", 0))  # IAD: past its warm-up
    method.train()
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.1, momentum=0.9)
    before = [p.detach().clone() for p in student.parameters()]
    x, y = batch()
    with autocast():
        out = method(x, y)
    loss = out.loss.float()
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.device.type == DEVICE.type
    if not out.backward_done:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None and g.device.type == DEVICE.type and torch.isfinite(g).all() for g in grads)
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))
    assert all(p.requires_grad for p in student.parameters())  # the attack restored them
    if teacher is not None and teacher_before is not None:
        for key, value in teacher.state_dict().items():
            assert torch.equal(value, teacher_before[key]), key


@pytest.mark.parametrize("mode", ["chunked", "low_memory"])
def test_adv_path_alignment_in_one_pass_equals_chunked_and_low_memory(mode: str) -> None:
    """The same loss and gradient (exact fp32, eval-mode batch norm) whether the (2m+1)B alignment inputs go
    through the student in one pass (the default on a GPU), in chunks of B, or backpropagated chunk by chunk
    (low_memory; train mode, where it applies, so batch-norm statistics are per chunk as in chunked)."""
    x, y = batch(8)
    student, teacher = tiny(seed=0), tiny(seed=1).eval()
    runs = []
    with exact_float32():
        for variant in ("one_pass", mode):
            net = copy.deepcopy(student)
            chunk = len(x) if variant != "one_pass" or mode == "low_memory" else None
            method = AdvPath(net, teacher, steps=3, gamma=1.0, step_loss="ce", aggregate="mean",
                             weights="prob_change", align_target="same_point", max_batch=chunk,
                             low_memory=variant == "low_memory",
                             generator=torch.Generator(device=DEVICE).manual_seed(3))
            method.train() if mode == "low_memory" else method.eval()
            paths = method.craft(x, y)
            if variant == "low_memory":
                out = method.backward_on(x, y, paths)
                assert out.backward_done
            else:
                out = method.loss_on(x, y, paths)
                out.loss.backward()
            runs.append((out.loss.item(), [p.grad.detach().clone() for p in net.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = runs
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    scale = max(float(g.abs().max()) for g in grads_a)
    assert max(float((a - b).abs().max()) for a, b in zip(grads_a, grads_b, strict=True)) <= 1e-4 * scale


# ---- attacks -------------------------------------------------------------------------------------------------


def _in_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> bool:
    return bool((x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_pgd_fgsm_and_cw_stay_in_the_ball_and_raise_the_loss(precision: str) -> None:
    model = tiny("resnet18", seed=2).eval()
    x, y = batch(32)
    amp = autocast() if precision == "bf16" else contextlib.nullcontext()
    with amp:
        res = pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=5, return_path=True,
                  generator=torch.Generator(device=DEVICE).manual_seed(0))
        x_fgsm = fgsm(model, x, y, eps=EPS)
        x_cw = cw_inf(model, x, y, eps=EPS, steps=5)
    assert res.path is not None and res.path.shape == (5, *x.shape) and res.path.device.type == DEVICE.type
    assert torch.equal(res.path[-1], res.x_adv)
    for x_adv in (res.x_adv, x_fgsm, x_cw, *res.path):
        assert x_adv.device.type == DEVICE.type and _in_ball(x_adv, x, EPS)
    with torch.no_grad():
        clean, adv = F.cross_entropy(model(x), y), F.cross_entropy(model(res.x_adv), y)
    assert adv > clean


def test_autoattack_subset_on_the_device() -> None:
    model = tiny("resnet18", seed=3).eval()
    x, y = batch(16)
    res = run_autoattack(model, x, y, eps=EPS, attacks=["apgd-ce", "apgd-t"], device=DEVICE, seed=0)
    assert res.x_adv.device.type == DEVICE.type and _in_ball(res.x_adv, x.contiguous(), EPS)
    assert int(res.robust.sum()) <= int(res.clean.sum())


# ---- verify (torch runtime) and export -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, width=0.125)
    meta = {"data": {"dataset": "synthetic", "classes": [f"class{k}" for k in range(10)]},
            "threat": {"norm": "linf", "eps": EPS, "alpha": ALPHA}}
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "student.safetensors", metadata=meta)


def test_verify_with_the_torch_runtime_on_the_device(checkpoint: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command("verify")(verify)
    app.callback()(lambda: None)
    res = CliRunner().invoke(app, ["verify", "--engine", str(checkpoint), "--device", str(DEVICE), "--data",
                                   "synthetic", "--n", "32", "--attacks", "pgd5,aa-custom:apgd-ce",
                                   "--no-gates", "--report", str(tmp_path / "report")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "report" / "verify.json").read_text())
    assert report["artifact"]["runtime"] == "torch"
    assert str(report["artifact"]["device"]).startswith(DEVICE.type)
    assert list(report["attacks"]) == ["clean", "pgd5", "aa-custom:apgd-ce"] and report["n"] == 32
    assert 0.0 <= report["robust_acc"] <= report["clean_acc"] <= 1.0


def test_export_from_a_model_on_the_device_matches_onnx_runtime(tmp_path: Path) -> None:
    model = tiny("mobilenet_v2", seed=4, width=0.25).eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    assert next(model.parameters()).device.type == DEVICE.type and not model.training  # left as it was
    x = torch.rand(8, 3, 32, 32)
    with exact_float32():
        parity = compare_onnx(model, path, x)
    assert parity["n"] == 8 and parity["top1_agreement"] == 1.0 and parity["max_abs_diff"] < 1e-3
