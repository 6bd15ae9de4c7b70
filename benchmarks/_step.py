"""The training-step bench that the step benchmarks share (``distill_step``, ``reference_step``,
``adv_path_memory``, ``gpu_check``): seeded models and a random batch, a method built from its recipe section,
one training step as ``rkd.train.loop`` runs it, the slow reference of adv_path, timing, multiply-adds, the FLOPs
of one step (:func:`count_flops`) and the process's memory.

A script in this folder imports it as ``import _step`` (a script's own folder is first on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import importlib.util
import os
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import TypeAdapter
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from rkd.attacks import pgd
from rkd.config import DistillMethodConfig, IadConfig, TrainConfig
from rkd.distill import METHODS, DistillMethod, create_method
from rkd.distill.adv_path import START_STD, AdvPath, AdvPaths
from rkd.models import create_model
from rkd.train.schedule import build_optimizer

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_TEST = REPO_ROOT / "tests" / "unit" / "test_adv_path.py"
WEIGHT_DECAY = 2e-4  # METHOD.md's recipe: SGD lr 0.1, momentum 0.9, weight decay 2e-4
MALLOC_MMAP_THRESHOLD = 131072  # fixed threshold: freed tensors go back to the OS, so RSS tracks live memory

Step = Callable[[], None]


# ---- models, data, methods ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelChoice:
    """An architecture as ``rkd.models.create_model`` takes it (width 1.0 for models without a width knob)."""

    name: str
    width: float = 1.0

    def build(self, num_classes: int) -> nn.Module:
        return create_model(self.name, num_classes=num_classes, width=self.width)

    def label(self) -> str:
        """E.g. ``resnet18 width 0.25``, ``wide_resnet depth 34 widen_factor 10`` (the factory's defaults)."""
        knobs = {"width": self.width} if self.width != 1.0 else {}
        spec = getattr(self.build(10), "spec", None)
        for knob in ("depth", "widen_factor"):
            if getattr(spec, knob, None) is not None:
                knobs[knob] = getattr(spec, knob)
        return " ".join([self.name, *(f"{k} {v:g}" for k, v in knobs.items())])


@dataclass
class Bench:
    """Everything shared by the variants: models (the student as built, before any copy), batch, settings."""

    student: nn.Module
    teacher: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    steps: int
    num_classes: int
    device: torch.device
    channels_last: bool
    seed: int
    amp: str = "auto"  # the training loop's train.amp: auto (bf16 on CUDA only), off, bf16

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The training loop's autocast for ``amp``: bf16 on CUDA with ``auto``, bf16 anywhere with ``bf16``."""
        if self.amp == "off" or (self.amp == "auto" and self.device.type != "cuda"):
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def make_bench(
    student: ModelChoice,
    teacher: ModelChoice,
    *,
    batch: int,
    steps: int,
    num_classes: int,
    device: torch.device,
    channels_last: bool,
    seed: int,
) -> Bench:
    """Seeded models and a random batch on ``device`` (channels_last like the training loop's loader)."""
    torch.manual_seed(seed)
    s, t = student.build(num_classes), teacher.build(num_classes)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, num_classes, (batch,), generator=gen)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    s, t = s.to(device).to(memory_format=fmt), t.to(device).to(memory_format=fmt)
    x = x.to(device).contiguous(memory_format=fmt)
    return Bench(
        student=s,
        teacher=t,
        x=x,
        y=y.to(device),
        steps=steps,
        num_classes=num_classes,
        device=device,
        channels_last=channels_last,
        seed=seed,
    )


def build_method(bench: Bench, name: str, **knobs: Any) -> tuple[DistillMethod, torch.optim.Optimizer]:
    """The registered method ``name`` from its recipe section (``steps = m``, plus ``knobs``) on a private copy
    of the student, in train mode, with the training loop's optimizer. adv_path is its ``reconstruction`` preset
    unless ``knobs`` name another (:class:`ReferenceAdvPath` implements that form, and the recorded results
    measured it)."""
    if name == "adv_path":
        knobs = {"preset": "reconstruction", **knobs}
    config = TypeAdapter(DistillMethodConfig).validate_python({"name": name, "steps": bench.steps, **knobs})
    student = copy.deepcopy(bench.student)
    cls = METHODS.get(name)
    method = create_method(config, student=student, teacher=bench.teacher if cls.needs_teacher else None)
    if isinstance(config, IadConfig):
        method.set_epoch(config.warmup_epochs)  # past the warm-up: IAD's own term is on
    method.train()
    optimizer = build_optimizer(
        method.trainable_parameters(), TrainConfig.model_validate({"weight_decay": WEIGHT_DECAY})
    )
    return method, optimizer


def train_step(
    bench: Bench,
    method: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[], torch.Tensor] | None = None,
) -> None:
    """One step as ``rkd.train.loop`` runs it: forward (with the attack), zero_grad, backward, SGD step (no
    zero_grad/backward when the method wrote the gradient itself: ``backward_done``)."""
    with bench.autocast():
        if loss_fn is not None:
            loss, done = loss_fn().float(), False
        else:
            out = method(bench.x, bench.y)
            loss, done = out.loss.float(), out.backward_done
    if not done:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    optimizer.step()


# ---- the slow reference of adv_path ------------------------------------------------------------------------


def load_reference_loss() -> Callable[[AdvPath, torch.Tensor, torch.Tensor, AdvPaths], torch.Tensor]:
    """``reference_loss`` of tests/unit/test_adv_path.py: METHOD.md's objective, one call per iterate."""
    spec = importlib.util.spec_from_file_location("rkd_test_adv_path", REFERENCE_TEST)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {REFERENCE_TEST}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn: Callable[[AdvPath, torch.Tensor, torch.Tensor, AdvPaths], torch.Tensor] = module.reference_loss
    return fn


class ReferenceAdvPath:
    """adv_path written the straightforward way: one PGD loop of B samples per branch, then the per-iterate
    reference loss. Same draws as :class:`AdvPath` from the same generator state (targets first, then the
    start noise of both branches as one (2B, C, H, W) normal draw), so both give the same paths and loss.

    Only METHOD.md's defaults are covered (random targets, CE steps, all iterates, paths on the student
    crafted in eval mode), which is what the registered adv_path runs with.
    """

    def __init__(
        self,
        method: AdvPath,
        num_classes: int,
        reference_loss: Callable[[AdvPath, torch.Tensor, torch.Tensor, AdvPaths], torch.Tensor],
    ) -> None:
        knobs = (
            method.target,
            method.step_loss,
            method.iterate_stride,
            method.path_model,
            method.crafting_mode,
        )
        if knobs != ("random", "ce", 1, "student", "eval") or method.gamma <= 0:
            raise ValueError(
                f"the reference covers METHOD.md's defaults only, got {knobs}, gamma {method.gamma}"
            )
        self.method, self.num_classes, self.reference_loss = method, num_classes, reference_loss

    def _draw(self, kind: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        gen = self.method.generator
        gdev = gen.device if gen is not None else device
        if kind == "int":
            return torch.randint(1, self.num_classes, shape, generator=gen, device=gdev).to(device)
        return torch.randn(shape, generator=gen, device=gdev).to(device)

    def craft(self, x: torch.Tensor, y: torch.Tensor) -> AdvPaths:
        """Branch U (ascend CE(y)) and branch T (descend CE(t)), each its own PGD loop on B samples."""
        m, b = self.method, len(x)
        targets = (y + self._draw("int", tuple(y.shape), x.device)) % self.num_classes
        noise = self._draw("normal", (2 * b, *x.shape[1:]), x.device)
        starts = [(x + START_STD * noise[:b]).clamp(0.0, 1.0), (x + START_STD * noise[b:]).clamp(0.0, 1.0)]
        was_training = m.student.training
        m.student.eval()
        try:
            paths = [
                pgd(
                    m.attack_model,
                    x,
                    labels,
                    eps=m.eps,
                    alpha=m.alpha,
                    steps=m.steps,
                    norm=m.norm,
                    targeted=targeted,
                    loss="ce",
                    x_init=x0,
                    return_path=True,
                ).path
                for labels, targeted, x0 in ((y, False, starts[0]), (targets, True, starts[1]))
            ]
        finally:
            m.student.train(was_training)
        u, t = paths
        assert u is not None and t is not None
        return AdvPaths(u=u, t=t, targets=targets, steps=list(range(1, m.steps + 1)))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.reference_loss(self.method, x, y, self.craft(x, y))


# ---- real images ------------------------------------------------------------------------------------------


def npz_batch(path: Path, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``batch`` images and labels of an .npz (x: N, H, W, 3 uint8; y: N), as torchvision's
    ``ToTensor`` gives them: float32 in [0, 1], NCHW contiguous."""
    import numpy as np

    with np.load(path, allow_pickle=False) as d:
        x = torch.from_numpy(np.ascontiguousarray(d["x"][:batch]))
        y = torch.from_numpy(np.asarray(d["y"][:batch]).astype("int64"))
    return x.permute(0, 3, 1, 2).float().div(255).contiguous(), y


# ---- timing ------------------------------------------------------------------------------------------------


def timed(bench: Bench, fn: Step) -> tuple[float, float, float, int]:
    """(wall s, process CPU s, system s, minor page faults) of one call."""
    bench.sync()
    ru0, cpu0, start = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
    fn()
    bench.sync()
    wall, cpu, ru1 = (
        time.perf_counter() - start,
        time.process_time() - cpu0,
        resource.getrusage(resource.RUSAGE_SELF),
    )
    return wall, cpu, ru1.ru_stime - ru0.ru_stime, ru1.ru_minflt - ru0.ru_minflt


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def per_round(fn: Callable[[int], float], n: int) -> dict[str, Any]:
    values = [fn(i) for i in range(n)]
    return {"per_round": values, **summary(values)}


# ---- multiply-adds -----------------------------------------------------------------------------------------


def macs_per_image(model: nn.Module, device: torch.device) -> int:
    """Multiply-adds of one forward of a 32x32 image, over Conv2d and Linear layers (forward hooks)."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.rand(1, 3, 32, 32, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


FLOP_MODEL = {
    "units": "multiply-adds per batch of B, F_s = student forward, F_t = teacher forward (per image)",
    "assumptions": "student fwd+bwd = 3 F_s (input and weight gradients); attack step = 2 F_s (forward and "
    "input gradient, parameters frozen); teacher no-grad forward = F_t",
    "adv_path": "B * [ 2m * 2 F_s  (m steps on 2B)  +  (2m+1) * (F_t + 3 F_s) ]",
    "rslad": "B * [ F_t  (clean soft labels)  +  m * 2 F_s  +  2 * 3 F_s  (x_adv and x) ]",
}


def implied_macs(f_s: float, f_t: float, m: int) -> dict[str, float]:
    adv = 2 * m * 2 * f_s + (2 * m + 1) * (f_t + 3 * f_s)
    rslad = f_t + m * 2 * f_s + 2 * 3 * f_s
    return {"adv_path_per_image": adv, "rslad_per_image": rslad, "ratio": adv / rslad}


# ---- FLOPs -------------------------------------------------------------------------------------------------


class FlopCount(TorchDispatchMode):
    """Sums ``torch.utils.flop_counter``'s formulas (convolutions and matrix products, forward and backward;
    2 FLOPs per multiply-add) over the operators dispatched in the block. ``FlopCounterMode`` itself cannot be
    used: its module tracker breaks ``torch.autograd.grad`` on a leaf input, which every PGD step calls."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += grouped_conv_backward_flops(formula, args, kwargs, out) if (
                func._overloadpacket is torch.ops.aten.convolution_backward and args[9] > 1 and args[10][1]
            ) else int(formula(*args, **kwargs, out_val=out))
        return out


def grouped_conv_backward_flops(formula: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    """FLOPs of a grouped convolution's backward. torch's formula (2.14) counts the weight gradient as if the
    convolution were not grouped: 2 * N * H_out * W_out * C_out * C_in * kh * kw instead of C_in / groups, which
    makes a depthwise layer's weight gradient C_in times too expensive (MobileNetV2's training pass 3.9 GFLOP per
    32x32 image instead of 0.55). The input gradient is counted by the formula; the weight gradient divided by
    ``groups``."""
    groups, mask = args[9], list(args[10])
    head = args[:10]
    total = int(formula(*head, [mask[0], False, mask[2]], **kwargs, out_val=out))
    return total + int(formula(*head, [False, True, False], **kwargs, out_val=out)) // groups


def count_flops(step: Step) -> int:
    """FLOPs of one call of ``step`` (:class:`FlopCount`). The call is a real step (it also warms up)."""
    with FlopCount() as counter:
        step()
    return counter.total


# ---- memory ------------------------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def trim() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
