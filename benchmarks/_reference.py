"""The reference training steps of ``reference_step`` (ARD and RSLAD written the way the published research code
writes them, each of rkd's changes switchable with :class:`Knobs`) and the published code itself, loaded from a
folder the user gives. ``reference_step`` times them against rkd's steps; ``gpu_check`` runs them on a GPU.

A script in this folder imports it as ``import _reference`` (a script's own folder is first on ``sys.path``).
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import sys
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _step import WEIGHT_DECAY
from torch import nn, optim

from rkd.attacks.checks import frozen_parameters
from rkd.distill import DistillMethod
from rkd.distill.ard import Ard
from rkd.distill.rslad import Rslad

# nn.KLDivLoss() (reduction "mean", as ARD's code uses it) warns on every call that "batchmean" is the KL
warnings.filterwarnings("ignore", message="reduction: 'mean' divides the total loss")


# ---- the reference steps -----------------------------------------------------------------------------------


def frozen_if(model: nn.Module, on: bool) -> contextlib.AbstractContextManager[None]:
    """rkd's ``frozen_parameters`` on ``model`` when ``on`` (an ablation: the published code never freezes)."""
    return frozen_parameters(model) if on else contextlib.nullcontext()


def no_grad_if(on: bool) -> contextlib.AbstractContextManager[Any]:
    return torch.no_grad() if on else contextlib.nullcontext()


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last for a channels_last 4-d tensor, else contiguous_format."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


@dataclass
class Knobs:
    """rkd's changes, each switchable on the reference (all off = the published code)."""

    frozen: bool = False  # parameters frozen during the attack
    no_grad_zero_weight: bool = False  # a term of weight 0 computed under no_grad (ARD's CE at alpha = 1)

    def label(self, channels_last: bool) -> str:
        on = [
            n
            for n, v in (
                ("frozen", self.frozen),
                ("channels_last", channels_last),
                ("no_grad_zero_weight", self.no_grad_zero_weight),
            )
            if v
        ]
        return "reference" + "".join(f"+{n}" for n in on)


class ArdReference:
    """ARD's training step written as goldblum/AdversariallyRobustDistillation ``main.py`` writes it.

    ``attack`` is ``AttackPGD.forward`` (uniform start in the eps-ball, m steps of ``torch.autograd.grad`` on
    ``F.cross_entropy(..., reduction="sum")`` (the code's ``size_average=False``), the student in train mode
    with its parameters not frozen, then one more forward at x_adv whose output enters the loss); ``step`` is
    the body of ``train``: zero_grad, the attack, the teacher on the clean input (its parameters frozen, no
    ``no_grad``), the student on the clean input, ``alpha T^2 KLDivLoss()(log_softmax(S(x_adv)/T),
    softmax(T(x)/T)) + (1 - alpha) CrossEntropyLoss()(S(x), y)``, backward, SGD step.

    ``rkd_start`` (for the loss check only) draws the uniform start with rkd's arithmetic instead of
    ``x + U(-eps, eps)``: from the same generator state the two differ by an ulp, which the sign steps of a
    train-mode (batch-coupled) attack amplify into different x_adv.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        temp: float,
        alpha: float,
        epsilon: float,
        step_size: float,
        num_steps: int,
        knobs: Knobs | None = None,
        generator: torch.Generator | None = None,
        rkd_start: bool = False,
    ) -> None:
        self.basic_net, self.teacher_net = student, teacher
        self.rkd_start = rkd_start
        for p in teacher.parameters():
            p.requires_grad = False
        teacher.eval()
        self.temp, self.alpha = temp, alpha
        self.epsilon, self.step_size, self.num_steps = epsilon, step_size, num_steps
        self.knobs = knobs or Knobs()
        self.generator = generator
        self.kl_loss, self.xent_loss = nn.KLDivLoss(), nn.CrossEntropyLoss()
        self.optimizer = optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=WEIGHT_DECAY)
        student.train()  # net.train() at the start of every epoch; the step never toggles it

    def attack(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``AttackPGD.forward``: (student logits at x_adv, x_adv)."""
        eps = self.epsilon
        x = inputs.detach()
        if self.rkd_start:  # rkd's arithmetic u * 2 eps - eps + x: bitwise rkd's start (the loss check only)
            x = torch.empty_like(x).uniform_(generator=self.generator).mul_(2 * eps).sub_(eps).add_(x)
        else:
            x = x + torch.zeros_like(x).uniform_(-eps, eps, generator=self.generator)
        x = torch.clamp(
            torch.min(torch.max(x, inputs - eps), inputs + eps), 0.0, 1.0
        )  # rkd's start projection
        with frozen_if(self.basic_net, self.knobs.frozen):
            for _ in range(self.num_steps):
                x.requires_grad_()
                with torch.enable_grad():
                    loss = F.cross_entropy(self.basic_net(x), targets, reduction="sum")
                grad = torch.autograd.grad(loss, [x])[0]
                x = x.detach() + self.step_size * torch.sign(grad.detach())
                x = torch.min(torch.max(x, inputs - eps), inputs + eps)
                x = torch.clamp(x, 0.0, 1.0)
        with no_grad_if(self.knobs.no_grad_zero_weight and self.alpha == 0):
            return self.basic_net(x), x

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss, x_adv)."""
        outputs, pert_inputs = self.attack(inputs, targets)
        teacher_outputs = self.teacher_net(inputs)
        with no_grad_if(self.knobs.no_grad_zero_weight and self.alpha == 1):
            basic_outputs = self.basic_net(inputs)
        t, a = self.temp, self.alpha
        kd = self.kl_loss(F.log_softmax(outputs / t, dim=1), F.softmax(teacher_outputs / t, dim=1))
        loss = a * t * t * kd + (1.0 - a) * self.xent_loss(basic_outputs, targets)
        return loss, pert_inputs

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        loss, _ = self.loss(inputs, targets)
        loss.backward()
        self.optimizer.step()


class RsladReference:
    """RSLAD's training step written as zibojia/RSLAD writes it.

    ``inner`` is ``rslad_loss.rslad_inner_loss`` (``model.eval()``, start x + 0.001 N(0, I), m steps of
    ``torch.autograd.grad`` on ``sum(KLDivLoss(reduction="none")(log_softmax(S(x')), softmax(T(x))))``,
    parameters not frozen, ``model.train()``, ``optimizer.zero_grad()``, the student's logits at x_adv);
    ``step`` is the loop body of ``resnet18_rslad_cifar10.py``: ``student.train()``, zero_grad, the teacher under
    ``no_grad``, the inner loss, ``student.train()``, the student on the clean input,
    ``(1 - lambda) mean(kl(S(x_adv))) + lambda mean(kl(S(x)))`` (elementwise means over B x C, times C / 10:
    1 on CIFAR-10, the scripts' factor 10 on CIFAR-100), backward, SGD step. The scripts wrap the student in
    ``DataParallel``, which on a CPU calls the module directly; it is left out.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        lambda_nat: float,
        epsilon: float,
        step_size: float,
        perturb_steps: int,
        knobs: Knobs | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.student, self.teacher = student, teacher
        teacher.eval()
        self.lambda_nat = lambda_nat
        self.epsilon, self.step_size, self.perturb_steps = epsilon, step_size, perturb_steps
        self.knobs = knobs or Knobs()
        self.generator = generator
        self.optimizer = optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=WEIGHT_DECAY)

    def inner(
        self, teacher_logits: torch.Tensor, x_natural: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``rslad_inner_loss``: (student logits at x_adv in train mode, x_adv)."""
        model, eps = self.student, self.epsilon
        criterion_kl = nn.KLDivLoss(reduction="none")
        model.eval()
        noise = torch.randn(x_natural.shape, generator=self.generator).to(x_natural.device)
        x_adv = (
            x_natural.detach() + 0.001 * noise.contiguous(memory_format=memory_format_of(x_natural)).detach()
        )
        x_adv = torch.clamp(torch.min(torch.max(x_adv, x_natural - eps), x_natural + eps), 0.0, 1.0)  # as rkd
        with frozen_if(model, self.knobs.frozen):
            for _ in range(self.perturb_steps):
                x_adv.requires_grad_()
                with torch.enable_grad():
                    loss_kl = criterion_kl(
                        F.log_softmax(model(x_adv), dim=1), F.softmax(teacher_logits, dim=1)
                    )
                    loss_kl = torch.sum(loss_kl)
                grad = torch.autograd.grad(loss_kl, [x_adv])[0]
                x_adv = x_adv.detach() + self.step_size * torch.sign(grad.detach())
                x_adv = torch.min(torch.max(x_adv, x_natural - eps), x_natural + eps)
                x_adv = torch.clamp(x_adv, 0.0, 1.0)
        model.train()
        x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()  # Variable(..., requires_grad=False)
        self.optimizer.zero_grad()
        return model(x_adv), x_adv

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss, x_adv)."""
        self.student.train()
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        adv_logits, x_adv = self.inner(teacher_logits, x)
        self.student.train()
        nat_logits = self.student(x)
        b = F.softmax(teacher_logits.detach(), dim=1)
        log_b = F.log_softmax(teacher_logits.detach(), dim=1)  # the scripts: torch.log(b + 1e-5)

        def kl_loss(a: torch.Tensor) -> torch.Tensor:
            return -a * b + log_b * b

        scale = teacher_logits.shape[1] / 10  # mean over B x C, times 10 on CIFAR-100: sum_c KL / 10
        kl1 = torch.mean(kl_loss(F.log_softmax(adv_logits, dim=1))) * scale
        kl2 = torch.mean(kl_loss(F.log_softmax(nat_logits, dim=1))) * scale
        return (1.0 - self.lambda_nat) * kl1 + self.lambda_nat * kl2, x_adv

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        loss, _ = self.loss(x, y)
        loss.backward()
        self.optimizer.step()


# ---- the published code itself (loaded from a folder the user gives; never part of this project) -----------


@contextlib.contextmanager
def cuda_calls_are_no_ops(device: torch.device) -> Any:
    """On a CPU, ``Tensor.cuda()`` returns the tensor itself for the block (the published code calls it on
    every batch and noise draw); on CUDA it is left alone."""
    if device.type == "cuda":
        yield
        return
    old = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *_a, **_k: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = old  # type: ignore[method-assign]


def load_published_rslad(folder: Path) -> types.ModuleType:
    """zibojia/RSLAD's ``rslad_loss.py`` from ``folder``, imported as it is."""
    path = Path(folder) / "rslad_loss.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: give the folder of a zibojia/RSLAD checkout (--published-rslad)")
    spec = importlib.util.spec_from_file_location("published_rslad_loss", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load_published_ard(folder: Path) -> type[nn.Module]:
    """The ``AttackPGD`` class of goldblum/AdversariallyRobustDistillation's ``main.py`` from ``folder``: only
    that class definition is compiled and run (the script's top level parses arguments and loads data)."""
    path = Path(folder) / "main.py"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: give the folder of a goldblum/AdversariallyRobustDistillation checkout (--published-ard)"
        )
    tree = ast.parse(path.read_text(), str(path))
    found = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "AttackPGD"]
    if not found:
        raise ImportError(f"{path} defines no class AttackPGD")
    scope: dict[str, Any] = {"torch": torch, "nn": nn, "F": F}
    exec(compile(ast.Module(body=found, type_ignores=[]), str(path), "exec"), scope)  # noqa: S102
    cls: type[nn.Module] = scope["AttackPGD"]
    return cls


class PublishedRslad:
    """RSLAD's step run by the published code: ``rslad_inner_loss`` from zibojia/RSLAD's ``rslad_loss.py``
    (imported unchanged), and the body of the training loop of ``mobilenet_v2_rslad_cifar10.py`` (lines 53-68
    at the fetched commit: ``student.train()`` ... ``optimizer.step()``, the ``print`` left out), mirrored
    statement by statement in :meth:`step`, with its ``kl_loss`` (lines 40-42). ``DataParallel`` is left out
    (on a CPU it calls the module directly; on one GPU it adds a scatter/gather)."""

    def __init__(
        self,
        module: types.ModuleType,
        student: nn.Module,
        teacher: nn.Module,
        *,
        lambda_nat: float,
        epsilon: float,
        step_size: float,
        perturb_steps: int,
    ) -> None:
        if abs(lambda_nat - 1 / 6) > 1e-12:
            raise ValueError("the published loop weighs the terms 5/6 and 1/6 (lambda_nat = 1/6)")
        self.module, self.student, self.teacher = module, student, teacher
        self.epsilon, self.step_size, self.perturb_steps = epsilon, step_size, perturb_steps
        self.device = next(student.parameters()).device
        self.optimizer = optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
        student.train()
        teacher.eval()

    @staticmethod
    def kl_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        loss = -a * b + torch.log(b + 1e-5) * b
        return loss

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        student, teacher, optimizer = self.student, self.teacher, self.optimizer
        with cuda_calls_are_no_ops(self.device):
            student.train()
            train_batch_data, train_batch_labels = x.float(), y
            optimizer.zero_grad()
            with torch.no_grad():
                teacher_logits = teacher(train_batch_data)
            adv_logits = self.module.rslad_inner_loss(
                student, teacher_logits, train_batch_data, train_batch_labels, optimizer,
                step_size=self.step_size, epsilon=self.epsilon, perturb_steps=self.perturb_steps,
            )
            student.train()
            nat_logits = student(train_batch_data)
            kl_loss1 = self.kl_loss(F.log_softmax(adv_logits, dim=1), F.softmax(teacher_logits.detach(), dim=1))
            kl_loss2 = self.kl_loss(F.log_softmax(nat_logits, dim=1), F.softmax(teacher_logits.detach(), dim=1))
            kl_loss1 = torch.mean(kl_loss1)
            kl_loss2 = torch.mean(kl_loss2)
            loss = 5 / 6.0 * kl_loss1 + 1 / 6.0 * kl_loss2
            loss.backward()
            optimizer.step()


class PublishedArd:
    """ARD's step run by the published code: ``AttackPGD`` from goldblum/AdversariallyRobustDistillation's
    ``main.py`` (its class definition, compiled unchanged), and the body of ``train`` (lines 118-124 at the
    fetched commit: ``optimizer.zero_grad()`` ... ``optimizer.step()``, the loss bookkeeping left out) mirrored
    statement by statement in :meth:`step`; ``net.train()`` as at the start of every epoch, the teacher's
    parameters frozen and the teacher in eval mode as the script sets them."""

    def __init__(
        self,
        attack_pgd: type[nn.Module],
        student: nn.Module,
        teacher: nn.Module,
        *,
        temp: float,
        alpha: float,
        epsilon: float,
        step_size: float,
        num_steps: int,
    ) -> None:
        self.basic_net, self.teacher_net = student, teacher
        for param in teacher.parameters():
            param.requires_grad = False
        teacher.eval()
        self.net = attack_pgd(student, {"epsilon": epsilon, "num_steps": num_steps, "step_size": step_size})
        self.net.train()
        self.temp, self.alpha = temp, alpha
        self.kl = nn.KLDivLoss()
        self.xent = nn.CrossEntropyLoss()
        self.optimizer = optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        optimizer, t, a = self.optimizer, self.temp, self.alpha
        optimizer.zero_grad()
        outputs, pert_inputs = self.net(inputs, targets)
        teacher_outputs = self.teacher_net(inputs)
        basic_outputs = self.basic_net(inputs)
        loss = a * t * t * self.kl(
            F.log_softmax(outputs / t, dim=1), F.softmax(teacher_outputs / t, dim=1)
        ) + (1.0 - a) * self.xent(basic_outputs, targets)
        loss.backward()
        optimizer.step()


Published = PublishedArd | PublishedRslad


def make_published(
    method: DistillMethod, student: nn.Module, teacher: nn.Module, folders: dict[str, Path | None]
) -> Published | None:
    """The published code's step for rkd's ``method`` (its hyper-parameters), or None without its folder."""
    if isinstance(method, Ard) and folders.get("ard") is not None:
        return PublishedArd(
            load_published_ard(folders["ard"]), student, teacher, temp=method.temperature,
            alpha=method.kd_weight, epsilon=method.eps, step_size=method.alpha, num_steps=method.steps,
        )
    if isinstance(method, Rslad) and folders.get("rslad") is not None:
        return PublishedRslad(
            load_published_rslad(folders["rslad"]), student, teacher, lambda_nat=method.lambda_nat,
            epsilon=method.eps, step_size=method.alpha, perturb_steps=method.steps,
        )
    return None


Reference = ArdReference | RsladReference


def make_reference(
    method: DistillMethod,
    student: nn.Module,
    teacher: nn.Module,
    knobs: Knobs,
    generator: torch.Generator | None,
) -> Reference:
    """The reference of rkd's ``method`` (its hyper-parameters) on ``student`` and ``teacher``."""
    if isinstance(method, Ard):
        if method.norm != "linf":
            raise ValueError("the ARD reference covers the L-inf attack only")
        return ArdReference(
            student,
            teacher,
            temp=method.temperature,
            alpha=method.kd_weight,
            epsilon=method.eps,
            step_size=method.alpha,
            num_steps=method.steps,
            knobs=knobs,
            generator=generator,
        )
    if isinstance(method, Rslad):
        if method.norm != "linf":
            raise ValueError("the RSLAD reference covers the L-inf attack only")
        return RsladReference(
            student,
            teacher,
            lambda_nat=method.lambda_nat,
            epsilon=method.eps,
            step_size=method.alpha,
            perturb_steps=method.steps,
            knobs=knobs,
            generator=generator,
        )
    raise ValueError(f"no reference for method {method.name!r}")


def has_zero_weight(method: DistillMethod) -> bool:
    """Whether a loss term has weight 0 (rkd then skips its backward; the published code does not)."""
    return isinstance(method, Ard) and method.kd_weight in (0.0, 1.0)
