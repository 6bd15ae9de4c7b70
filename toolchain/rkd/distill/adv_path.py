"""The adversarial-path method: robust distillation on untargeted and targeted intermediate adversarial samples.

Dong, Koniusz, Chen, Wang, Ong, "Robust Distillation via Untargeted and Targeted Intermediate Adversarial
Samples", CVPR 2024. Only the paper's idea is fixed (align teacher and student on the intermediate iterates of
an untargeted and a targeted path, adaptively weighted); every choice beyond it is a knob of
:class:`rkd.config.AdvPathConfig` (docs/METHOD.md lists them and what decided the defaults):

    x_b[0] = clip(x + 0.001 N(0, I))                                            b in {U, T}
    x_u[k+1] = Proj(x_u[k] + alpha sign(grad L_U(S(x_u[k]))))   L_U = CE(., y), CW margin, or
                                                                KL(p_T(x) || p_S(.)) (step_loss = kl, RSLAD's)
    x_t[k+1] = Proj(x_t[k] - alpha sign(grad CE(S(x_t[k]), t)))    (branch T, t != y; CW margin with step_loss cw)
    l_b[k]   = KL(q_b[k] || p_S(x_b[k])),  q = p_T(x_b[k]) (align_target same_point) or p_T(x) (clean)
    d_U[k]   = max(0, p(x_u[0])_y - p(x_u[k])_y),  d_T[k] = max(0, p(x_t[k])_t - p(x_t[0])_t)
             with p the teacher (weight_model teacher, x_b[0] read as x) or the model that crafted the path,
             as it was while crafting (weight_model path)
    w_b[k]   = d_b[k] / max_{batch, k} d_b       (prob_change; or uniform, linear k/m, teacher entropy)
    L_b      = mean_batch [ sum_k w_b[k] l_b[k] / (sum_k w_b[k] + 1e-8) ]          (aggregate mean)
             = mean_batch [ sum_k w_b[k] l_b[k] ]                                   (aggregate sum)
    L = lambda_nat KL(p_T(x) || p_S(x)) + (1 - lambda_nat) (L_U + gamma L_T) / (1 + gamma)

With ``aggregate: mean`` the batch-max normalisation of w cancels (each sample's weights are renormalised to sum
to 1), and a sample whose weights are all zero gets no adversarial term at all; with ``aggregate: sum`` the
batch maximum sets the scale (a sample's iterates together weigh up to K) and the weights keep their size. Both
cases count the samples left without an adversarial term (``StepOutput.stats``, ``zero_weight_u/t``).
Every KL is on RSLAD's scale (``RSLAD_KL_SCALE``: summed over classes, divided by 10, batch mean), so adv_path
and RSLAD compare under the same optimizer settings; reduced to branch U, the last iterate, uniform weights
and the clean-teacher target, the loss is RSLAD's on the same x_adv.

Cost: both branches' m attack steps run as one batch of 2B (the targeted branch descends, the untargeted one
ascends: one signed objective); the teacher's pass over all used iterates is one no-grad batch and the student's
one batch, split into chunks of ``max_batch`` when set; the clean pass is separate for both, as in RSLAD's code,
so batch-norm statistics of clean and adversarial inputs are not mixed. ``max_batch=None`` means one pass on a
GPU and chunks of B on a CPU: there one allocation for the whole pass (e.g. 88 MB) is served by fresh mmap pages
and page faults cost a quarter of the step (benchmarks/results/distill_step-cpu.md); with B-sized chunks each
chunk is one iterate's batch, so the student's batch-norm statistics are per iterate, as in the reference.
``weight_model: path`` reads the crafting model's probabilities from the attack's own forward passes (x_0 to
x_{m-1}) plus one no-grad pass at x_m.

Memory: the student's graph over all 2m + 1 passes is kept until ``backward`` (e.g. 11.8 GB on a CPU for a
MobileNetV2 0.5 at batch 128, m = 5); chunking alone does not lower it. With ``low_memory`` each chunk (and the
clean pass) is backpropagated as soon as its loss is known: the weights carry no gradient, so the summed
gradients are those of the whole loss, at the peak memory of one chunk (:meth:`AdvPath.backward_on`).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from rkd.attacks import cw_margin, pgd
from rkd.config import AdvPathConfig
from rkd.distill.base import METHODS, DistillMethod, StepOutput
from rkd.distill.losses import RSLAD_KL_SCALE, kl_per_sample, soft_targets

START_STD = 0.001
WEIGHT_EPS = 1e-8


@dataclass
class AdvPaths:
    """The crafted paths of one batch.

    Attributes:
        u: untargeted iterates used, (K, B, C, H, W).
        t: targeted iterates used, (K, B, C, H, W), or None when the targeted branch is off (gamma = 0).
        targets: the target class of each sample for branch T (B,), or None.
        steps: the 1-based step index k of each used iterate (K,), e.g. [1..m] or [r, 2r, ..., m].
        probs: with ``weight_model: path``, the crafting model's probabilities at the used iterates,
            (nb, K, B, classes) in branch order (U, then T); else None.
        start_probs: with ``weight_model: path``, its probabilities at the start x_0, (nb, B, classes); else None.
    """

    u: torch.Tensor
    t: torch.Tensor | None
    targets: torch.Tensor | None
    steps: list[int]
    probs: torch.Tensor | None = None
    start_probs: torch.Tensor | None = None


def used_steps(m: int, stride: int) -> list[int]:
    """1-based indices of the iterates used: every ``stride``-th plus the last (``stride`` 1: all m)."""
    ks = list(range(stride, m + 1, stride))
    if not ks or ks[-1] != m:
        ks.append(m)
    return ks


def _chunked(fn: Any, x: torch.Tensor, max_batch: int | None) -> torch.Tensor:
    if max_batch is None or len(x) <= max_batch:
        return fn(x)
    return torch.cat([fn(c) for c in x.split(max_batch)])


@METHODS.register("adv_path")
class AdvPath(DistillMethod):
    """Robust distillation on the adversarial path (Dong et al., CVPR 2024); the defaults are the
    ``kl_linear_sum`` preset of :data:`rkd.config.ADV_PATH_PRESETS` (docs/METHOD.md says why).

    Example:
        >>> method = AdvPath(student, teacher, steps=10)
        >>> out = method(x, y); out.loss.backward()
    """

    name = "adv_path"
    config_class = AdvPathConfig
    needs_teacher = True

    def _draw(self, shape: torch.Size | tuple[int, ...], device: torch.device, kind: str,
              high: int = 0) -> torch.Tensor:
        gen = self.generator
        gdev = gen.device if gen is not None else device
        if kind == "int":
            return torch.randint(1, high, shape, generator=gen, device=gdev).to(device)
        return torch.randn(shape, generator=gen, device=gdev).to(device)

    def choose_targets(self, y: torch.Tensor, teacher_clean: torch.Tensor) -> torch.Tensor:
        """Target class t != y of branch T: uniform random, the teacher's runner-up, or its least likely class."""
        c = teacher_clean.shape[1]
        if self.target == "random":
            return (y + self._draw(y.shape, y.device, "int", high=c)) % c
        masked = teacher_clean.clone()
        fill = float("-inf") if self.target == "runner_up" else float("inf")
        masked.scatter_(1, y[:, None], fill)
        return masked.argmax(1) if self.target == "runner_up" else masked.argmin(1)

    def craft(self, x: torch.Tensor, y: torch.Tensor, teacher_clean: torch.Tensor | None = None) -> AdvPaths:
        """Both branches' paths as one PGD run on a batch of 2B (B when the targeted branch is off)."""
        two = self.gamma > 0
        if teacher_clean is None and (two or self.step_loss == "kl"):
            teacher_clean = self.teacher_logits(x)
        targets = self.choose_targets(y, teacher_clean) if two and teacher_clean is not None else None
        xx = torch.cat([x, x]) if two else x
        labels = torch.cat([y, targets]) if two else y
        b = len(x)
        sign = torch.ones(len(xx), device=x.device)
        if two:
            sign[b:] = -1.0  # branch T descends the loss of its target
        x0 = (xx + START_STD * self._draw(xx.shape, x.device, "normal")).clamp_(0.0, 1.0)
        record = self.weight_model == "path" and self.weights == "prob_change"
        seen: list[torch.Tensor] = []  # the crafting model's logits at x_0 .. x_{m-1}
        kl_target = soft_targets(teacher_clean) if self.step_loss == "kl" and teacher_clean is not None else None

        def objective(logits: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
            logits = logits.float()
            if record:
                seen.append(logits.detach())
            if self.step_loss == "cw":
                per = cw_margin(logits, lab)
            elif self.step_loss == "ce":
                per = F.cross_entropy(logits, lab, reduction="none")
            else:  # kl: branch U ascends KL(p_T(x) || p(x')) (RSLAD's inner maximisation); branch T its CE
                assert kl_target is not None
                kl = kl_per_sample(kl_target, logits[:b])
                per = torch.cat([kl, F.cross_entropy(logits[b:], lab[b:], reduction="none")]) if two else kl
            return (sign * per).sum()

        model = self.attack_model if self.path_model == "student" else self.teacher
        assert model is not None
        was_training = self.student.training
        if self.path_model == "student":
            self.student.train(self.crafting_mode == "train")
        try:
            path = pgd(model, xx, labels, eps=self.eps, alpha=self.alpha, steps=self.steps, norm=self.norm,
                       loss=objective, x_init=x0, return_path=True).path
            assert path is not None
            probs = None
            if record:
                with torch.no_grad():
                    seen.append(model(path[-1]).float())
                probs = F.softmax(torch.stack(seen), dim=2)  # (m + 1, nb * B, classes): x_0 .. x_m
        finally:
            self.student.train(was_training)
        ks = used_steps(self.steps, self.iterate_stride)
        sel = path if len(ks) == self.steps else path[[k - 1 for k in ks]]
        nb = 2 if two else 1
        path_probs = start_probs = None
        if probs is not None:
            path_probs = probs[ks].view(len(ks), nb, b, -1).transpose(0, 1)
            start_probs = probs[0].view(nb, b, -1)
        return AdvPaths(u=sel[:, :b], t=sel[:, b:] if two else None, targets=targets, steps=ks,
                        probs=path_probs, start_probs=start_probs)

    # ---- the loss -------------------------------------------------------------------------------------------

    def _weights(
        self, branch: str, p_iter: torch.Tensor, p_clean: torch.Tensor, cls: torch.Tensor, paths: AdvPaths, i: int
    ) -> torch.Tensor:
        """Adaptive weights (K, B) of branch ``branch`` (index ``i`` in ``paths``), without gradient.

        ``p_iter`` (K, B, classes) and ``p_clean`` (B, classes) are the teacher's probabilities at the iterates
        and at x; ``prob_change`` reads the crafting model's own from ``paths`` under ``weight_model: path``.
        """
        k_n, b = p_iter.shape[:2]
        if self.weights == "uniform":
            w = torch.ones(k_n, b, device=p_iter.device)
        elif self.weights == "linear":
            w = (torch.tensor(paths.steps, device=p_iter.device, dtype=torch.float32) / self.steps)[:, None]
            w = w.expand(k_n, b)
        else:
            if self.weights == "prob_change":
                p_k_all, p_0_all = p_iter, p_clean
                if self.weight_model == "path":
                    assert paths.probs is not None and paths.start_probs is not None
                    p_k_all, p_0_all = paths.probs[i], paths.start_probs[i]
                p_k = p_k_all.gather(2, cls[None, :, None].expand(k_n, b, 1)).squeeze(2)
                p_0 = p_0_all.gather(1, cls[:, None]).squeeze(1)[None]
                d = (p_0 - p_k) if branch == "u" else (p_k - p_0)
                d = d.clamp_min(0.0)
            else:  # entropy of the teacher at the iterate
                d = -(p_iter * p_iter.clamp_min(1e-12).log()).sum(2)
            w = d / d.max().clamp_min(1e-12)
        if self.reliability:
            top = p_clean.argmax(1)[None, :, None].expand(k_n, b, 1)
            w = w * p_iter.gather(2, top).squeeze(2).pow(self.reliability_beta)
        return w

    def _alignment(
        self, x: torch.Tensor, y: torch.Tensor, paths: AdvPaths, teacher_clean: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str], dict[str, torch.Tensor]]:
        """What the loss needs besides the student: the iterates (nb*K*B, C, H, W) in branch-major order, their
        soft targets, each iterate's coefficient (weight, divided by the sample's weight sum under ``aggregate:
        mean``, times branch factor / B; no gradient), the clean soft target, the branch names and the share of
        samples per branch left without an adversarial term (all weights zero); the loss is
        ``sum(coef * KL(target, p_S(iterate))) + lambda_nat * KL_nat``."""
        branches = [("u", paths.u)] + ([("t", paths.t)] if paths.t is not None else [])
        k_n, b = paths.u.shape[:2]
        iterates = torch.cat([p.reshape(-1, *p.shape[2:]) for _, p in branches])
        logits_t_iter = _chunked(self.teacher_logits, iterates, self._chunk(x))
        with torch.no_grad():
            p_clean = F.softmax(teacher_clean, dim=1)
            p_iter = F.softmax(logits_t_iter, dim=1).view(len(branches), k_n, b, -1)
            branch_weight = {"u": 1.0, "t": self.gamma}
            norm = 1.0 + (self.gamma if paths.t is not None else 0.0)
            coef, stats = [], {}
            for i, (name, _) in enumerate(branches):
                cls = y if name == "u" else paths.targets
                assert cls is not None
                w = self._weights(name, p_iter[i], p_clean, cls, paths, i)
                factor = (1 - self.lambda_nat) * branch_weight[name] / norm / b
                total = w.sum(0)
                stats[f"zero_weight_{name}"] = (total <= 0).float().mean()
                coef.append((w / (total + WEIGHT_EPS) if self.aggregate == "mean" else w) * factor)
        target_clean = soft_targets(teacher_clean, self.temperature)
        if self.align_target == "clean":
            target_iter = target_clean.repeat(len(branches) * k_n, 1)
        else:
            target_iter = soft_targets(logits_t_iter, self.temperature)
        return (iterates, target_iter, torch.stack(coef).flatten(), target_clean, [name for name, _ in branches],
                stats)

    def _chunk(self, x: torch.Tensor) -> int | None:
        if self.max_batch is not None:
            return self.max_batch
        return len(x) if x.device.type == "cpu" or self.low_memory else None

    def loss_on(self, x: torch.Tensor, y: torch.Tensor, paths: AdvPaths,
                teacher_clean: torch.Tensor | None = None) -> StepOutput:
        """The alignment loss on given paths: one teacher pass (no grad) and one student pass over all iterates."""
        tau = self.temperature
        if teacher_clean is None:
            teacher_clean = self.teacher_logits(x)
        iterates, target_iter, coef, target_clean, names, stats = self._alignment(x, y, paths, teacher_clean)
        k_n, b = paths.u.shape[:2]
        logits_s_nat = self.student(x)
        logits_s_iter = _chunked(self.student, iterates, self._chunk(x))
        scale = RSLAD_KL_SCALE * tau * tau
        kl_nat = kl_per_sample(target_clean, logits_s_nat, tau).mean() * scale
        weighted = (coef * kl_per_sample(target_iter, logits_s_iter, tau) * scale).view(len(names), -1).sum(1)
        terms = {f"path_{name}": weighted[i] for i, name in enumerate(names)}
        terms["kd_nat"] = self.lambda_nat * kl_nat
        loss = sum(terms.values())
        assert isinstance(loss, torch.Tensor)
        logits_final_u = logits_s_iter[(k_n - 1) * b : k_n * b]
        return StepOutput(loss=loss, logits=logits_final_u, parts={k: v.detach() for k, v in terms.items()},
                          stats=stats)

    def backward_on(self, x: torch.Tensor, y: torch.Tensor, paths: AdvPaths,
                    teacher_clean: torch.Tensor | None = None) -> StepOutput:
        """:meth:`loss_on` with its gradient accumulated chunk by chunk (``low_memory``).

        Sets the student's ``.grad`` to the gradient of the whole loss (replacing what was there) and returns
        the loss detached, with ``backward_done``. The student runs the same passes in the same order as in
        :meth:`loss_on`, so its batch-norm statistics are the same; under DDP only the last backward syncs.
        """
        tau = self.temperature
        if teacher_clean is None:
            teacher_clean = self.teacher_logits(x)
        iterates, target_iter, coef, target_clean, names, stats = self._alignment(x, y, paths, teacher_clean)
        k_n, b = paths.u.shape[:2]
        scale = RSLAD_KL_SCALE * tau * tau
        for p in self.student.parameters():
            p.grad = None
        no_sync = getattr(self.student, "no_sync", None)  # DistributedDataParallel: sync on the last backward
        chunk = self._chunk(x) or len(iterates)
        starts = list(range(0, len(iterates), chunk))
        weighted = torch.zeros(len(iterates), device=x.device)
        logits_iter = []
        with no_sync() if no_sync is not None else nullcontext():
            loss_nat = self.lambda_nat * kl_per_sample(target_clean, self.student(x), tau).mean() * scale
            loss_nat.backward()
            kd_nat = loss_nat.detach()
        for j, start in enumerate(starts):
            sl = slice(start, start + chunk)
            last = j == len(starts) - 1
            with no_sync() if no_sync is not None and not last else nullcontext():
                logits = self.student(iterates[sl])
                part = coef[sl] * kl_per_sample(target_iter[sl], logits, tau) * scale
                part.sum().backward()
            weighted[sl] = part.detach()
            logits_iter.append(logits.detach())
        sums = weighted.view(len(names), -1).sum(1)
        terms = {f"path_{name}": sums[i] for i, name in enumerate(names)}
        terms["kd_nat"] = kd_nat
        loss = sum(terms.values())
        assert isinstance(loss, torch.Tensor)
        logits_final_u = torch.cat(logits_iter)[(k_n - 1) * b : k_n * b]
        return StepOutput(loss=loss, logits=logits_final_u, parts=terms, backward_done=True, stats=stats)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        teacher_clean = self.teacher_logits(x)
        paths = self.craft(x, y, teacher_clean)
        if self.low_memory and self.training and torch.is_grad_enabled():
            return self.backward_on(x, y, paths, teacher_clean)
        return self.loss_on(x, y, paths, teacher_clean)
