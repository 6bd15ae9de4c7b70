"""Speed of rkd's ARD and RSLAD training steps against plain-PyTorch reference steps written the way the
published research code writes them.

What it measures, in one run, for every student and method (ARD, RSLAD), with one teacher, batch B and m attack
steps:

- ``reference``: the training step as the authors' published scripts run it. ARD:
  goldblum/AdversariallyRobustDistillation ``main.py`` (``AttackPGD`` and ``train``). RSLAD: zibojia/RSLAD
  ``rslad_loss.py`` (``rslad_inner_loss``) and the loop of ``resnet18_rslad_cifar10.py`` /
  ``mobilenet_v2_rslad_cifar10.py``. That is: fp32 eager, NCHW, a Python loop over the m attack steps with
  ``torch.autograd.grad`` on the input, the student's parameters NOT frozen during the attack, the scripts'
  ``model.eval()`` / ``model.train()`` toggles, separate teacher calls, ``nn.KLDivLoss`` terms, every term of
  the loss in the autograd graph (also ARD's clean cross-entropy at weight 1 - alpha = 0), ``optim.SGD``. The
  math is rkd's: same loss, temperature, weights, m, step size, eps and start distribution. Two deviations from
  the published code, both to keep the math equal and both without cost: the start is projected onto the
  eps-ball and [0, 1] as rkd does (the published code projects only after the first step), and RSLAD's KL uses
  the teacher's exact log-probabilities where ``kl_loss`` takes ``log(p + 1e-5)`` (a constant shift of the
  loss value, no change to its gradient).
- ``published`` (``--published-rslad DIR``, ``--published-ard DIR``: a checkout of the authors' repository;
  left out without it): the published code itself, not a re-creation. RSLAD: ``rslad_inner_loss`` imported
  unchanged from ``DIR/rslad_loss.py``, and the loop body of ``mobilenet_v2_rslad_cifar10.py`` (from
  ``student.train()`` to ``optimizer.step()``) and its ``kl_loss`` mirrored statement by statement in
  :class:`PublishedRslad`. ARD: the ``AttackPGD`` class definition of ``DIR/main.py`` compiled unchanged (the
  script's top level, which parses arguments and loads data, is not run), and the body of ``train`` mirrored in
  :class:`PublishedArd`. On a CPU the published ``.cuda()`` calls are made no-ops for the step. Its batch is
  the same NCHW batch as the reference's, laid out as torchvision's ``ToTensor`` (which the published scripts
  load with) gives it. With ``--ablations channels_last_batch``: ``published+channels_last_batch``, the
  published code fed the same batch in channels_last strides, as ``torch.from_numpy(hwc).permute(0, 3, 1, 2)``
  gives it: PyTorch then runs the NCHW models' convolutions channels_last, i.e. the published code gets the
  layout rkd chooses without asking for it. A published step timed on such a batch is not the published
  scripts' speed; this is what made a comparison outside this benchmark find the published loop as fast as
  rkd's channels_last step while the reference (NCHW batch) was 1.4x slower.
- ``rkd``: rkd's method built from its recipe section (``DistillMethodConfig`` with ``steps = m``), one step as
  ``rkd.train.loop`` runs it (``method(x, y).loss``, zero_grad, backward, SGD step), student in train mode,
  models and inputs channels_last (the loop's default; ``--no-channels-last`` turns it off).
- ``rkd+compile``: the same with ``train.compile_attack`` on (``method.attack_model =
  compile_attack_model(student)``, as ``rkd.train.loop`` does). It is compiled before the timing starts; the
  compile time is reported.
- ``rkd+bf16`` (``--bf16``): rkd's step with ``train.amp: bf16`` (the step's forward, attack and teacher calls
  under ``torch.autocast("cpu", torch.bfloat16)``, as ``rkd.train.loop`` runs it): not the same arithmetic,
  so it is reported beside the fp32 variants, with its loss against rkd fp32 (check d). CPUs with AMX-BF16 or
  AVX512-BF16 run bf16 convolutions natively; others emulate them and may be slower.
- ablations (``--ablations``, timed over ``--ablation-rounds`` rounds): the reference with one of rkd's
  changes: ``+frozen`` (parameters frozen during the attack), ``+channels_last`` (models and inputs
  channels_last), ``+no_grad_zero_weight`` (ARD: the forward of a term of weight 0 under ``no_grad``, so no
  backward runs through it), ``+all`` (all of them).

Before timing, per student and method, the losses are checked to agree: (a) rkd and the reference, both NCHW,
the attack start drawn from identically seeded generators: loss, x_adv and the student's gradients compared
(for ARD also (a'): the start drawn with rkd's arithmetic, bitwise equal; the published draw differs by an
ulp); (b) rkd, NCHW and channels_last (as timed), with the reference's x_adv injected in place of its attack;
(c) rkd+compile against rkd eager, same generator seed, loss compared (this call also compiles); (d) with
``--bf16``, rkd+bf16 against rkd fp32, same generator seed, loss compared.

Every variant's FLOPs are counted once on one step (``torch.utils.flop_counter``'s formulas for convolutions
and matrix products, forward and backward; compiled and bf16 variants carry their eager fp32 twin's count), and
the report gives GFLOP/s beside every time. ``--data-npz`` takes real images (an .npz of HWC uint8 ``x`` and
``y``, e.g. CIFAR-10) instead of uniform noise.

How: every variant runs once as a warm-up, then ``--rounds`` rounds (ablations: the first
``--ablation-rounds`` of them); inside a round each variant runs once, in an order reversed every other round,
so background load on a shared machine hits all variants alike. Ratios reference / variant are computed per
round, then their median and min/max. Data are uniform random images with random labels and the models are
untrained: a step's cost depends on neither.

Run (the machine's threads are shared, so pin them; a cold Inductor cache adds minutes of compiling to
rkd+compile; RSLAD_DIR and ARD_DIR are checkouts of zibojia/RSLAD and goldblum/AdversariallyRobustDistillation)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/reference_step.py --students mobilenet_v2:1.0 \
        --teacher-width 1.0 --threads 1 --rounds 3 --ablations channels_last_batch --no-compile --bf16 \
        --published-rslad RSLAD_DIR --published-ard ARD_DIR --data-npz CIFAR10_TRAIN_NPZ \
        --out benchmarks/results/reference_step-published-cpu-mnv2.json

(about 30 minutes on one core of the 2-core development machine). Without ``--published-*`` the published
variants are left out and only the re-creation is compared, as in ``results/reference_step-cpu.md``.

``--render REPORT.json`` rewrites only the Markdown of an existing report.

It writes the JSON (machine, torch version, threads, date, command, raw timings, checks) and a Markdown
summary beside it (same name, ``.md``). ``TORCHINDUCTOR_CACHE_DIR`` defaults to ``/tmp/inductor-cache``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _common import pin_threads, report_header, report_parser, stderr_log, write_report
from _reference import (
    ArdReference,
    Knobs,
    Reference,
    has_zero_weight,
    make_published,
    make_reference,
    memory_format_of,
)
from _step import (
    WEIGHT_DECAY,
    Bench,
    ModelChoice,
    build_method,
    count_flops,
    make_bench,
    npz_batch,
    per_round,
    summary,
    timed,
    train_step,
)
from torch import nn

from rkd.attacks import compile_attack_model
from rkd.distill import DistillMethod
from rkd.distill.ard import Ard

Step = Callable[[], None]
METHOD_NAMES = ("ard", "rslad")
ABLATIONS = ("frozen", "channels_last", "no_grad_zero_weight", "all", "channels_last_batch")
TARGET_SPEEDUP = 2.0  # the product owners' target: rkd at least 2x faster than the reference on this CPU
ARD_SOURCE = "goldblum/AdversariallyRobustDistillation main.py (AttackPGD.forward, train)"
PUBLISHED_SOURCE = {
    "ard": "AttackPGD from main.py, the body of train mirrored",
    "rslad": "rslad_inner_loss from rslad_loss.py, the loop body of mobilenet_v2_rslad_cifar10.py mirrored",
}
RSLAD_SOURCE = (
    "zibojia/RSLAD rslad_loss.py (rslad_inner_loss) and resnet18_rslad_cifar10.py / mobilenet_v2_rslad_cifar10.py "
    "(the training loop)"
)


# ---- the loss-agreement checks -----------------------------------------------------------------------------


def _grads(module: nn.Module) -> list[torch.Tensor]:
    return [
        (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone() for p in module.parameters()
    ]


def _grad_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> dict[str, float]:
    """Max |a - b| and max |a| over all parameters, and ||a - b|| / ||a|| over the whole gradient vector."""
    diff = torch.cat([(u - v).flatten() for u, v in zip(a, b, strict=True)])
    ref = torch.cat([u.flatten() for u in a])
    return {
        "grad_max_abs_diff": float(diff.abs().max()),
        "grad_max_abs": float(ref.abs().max()),
        "grad_rel_l2_diff": float(diff.norm() / ref.norm().clamp_min(1e-30)),
    }


def record_craft(method: DistillMethod) -> list[torch.Tensor]:
    """Make ``method.craft`` also append its x_adv to the returned list (for comparisons)."""
    seen: list[torch.Tensor] = []
    craft = method.craft

    def recorded(*args: Any, **kwargs: Any) -> torch.Tensor:
        x_adv: torch.Tensor = craft(*args, **kwargs)
        seen.append(x_adv.detach())
        return x_adv

    method.craft = recorded  # type: ignore[method-assign]
    return seen


def injected_check(
    bench: Bench, name: str, x_adv: torch.Tensor, loss_ref: torch.Tensor, g_ref: list[torch.Tensor]
) -> dict[str, Any]:
    """rkd on ``bench`` with ``x_adv`` injected in place of its attack, against the reference's loss."""
    method, _ = build_method(bench, name)
    x_adv_in = x_adv.detach().contiguous(memory_format=memory_format_of(bench.x))
    method.craft = lambda *_a, **_k: x_adv_in  # type: ignore[method-assign]
    method.student.zero_grad(set_to_none=True)
    loss = method(bench.x, bench.y).loss
    loss.backward()
    return {
        "what": f"rkd ({'channels_last' if bench.channels_last else 'NCHW'}) with the reference's x_adv "
        "injected in place of its attack, against the reference's loss (NCHW)",
        "loss_rkd": loss.item(),
        "loss_reference": loss_ref.item(),
        "abs_diff": abs(loss.item() - loss_ref.item()),
        **_grad_diff(g_ref, _grads(method.student)),
    }


def loss_checks(bench_nchw: Bench, bench_cl: Bench, name: str, seed: int) -> dict[str, Any]:
    """Check (a): rkd and the reference, both NCHW, attack start from identically seeded generators (for ARD
    also (a') with the start drawn by rkd's arithmetic, bitwise equal); (b): rkd, NCHW and channels_last,
    with the reference's x_adv injected."""
    x, y = bench_nchw.x, bench_nchw.y
    rkd, _ = build_method(bench_nchw, name)
    rkd.generator = torch.Generator().manual_seed(seed)
    crafted = record_craft(rkd)
    rkd.student.zero_grad(set_to_none=True)
    loss_rkd = rkd(x, y).loss
    loss_rkd.backward()
    g_rkd = _grads(rkd.student)

    def reference_run(
        rkd_start: bool,
    ) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        student = copy.deepcopy(bench_nchw.student)
        ref = make_reference(rkd, student, bench_nchw.teacher, Knobs(), torch.Generator().manual_seed(seed))
        if isinstance(ref, ArdReference):
            ref.rkd_start = rkd_start
        loss_ref, x_adv_ref = ref.loss(x, y)
        loss_ref.backward()
        g_ref = _grads(student)
        adv_diff = (crafted[-1] - x_adv_ref).abs()
        what = (
            "rkd and the reference, both NCHW fp32, the start drawn by rkd's arithmetic from identically "
            "seeded generators (bitwise the same start)"
            if rkd_start
            else "rkd and the reference, both NCHW fp32, attack start from identically seeded generators, "
            "each drawing it its own way"
        )
        check = {
            "what": what,
            "loss_rkd": loss_rkd.item(),
            "loss_reference": loss_ref.item(),
            "abs_diff": abs(loss_rkd.item() - loss_ref.item()),
            "x_adv_max_abs_diff": float(adv_diff.max()),
            "x_adv_fraction_differing": float((adv_diff > 1e-6).float().mean()),
            **_grad_diff(g_ref, g_rkd),
        }
        return check, loss_ref, x_adv_ref, g_ref

    same_noise, loss_ref, x_adv_ref, g_ref = reference_run(False)
    out = {"same_start_noise": same_noise}
    if isinstance(rkd, Ard):
        out["same_start_bitwise"] = reference_run(True)[0]
    out["injected_x_adv_nchw"] = injected_check(bench_nchw, name, x_adv_ref, loss_ref, g_ref)
    out["injected_x_adv_channels_last"] = injected_check(bench_cl, name, x_adv_ref, loss_ref, g_ref)
    return out


def compile_check(rkd: DistillMethod, rkd_compiled: DistillMethod, bench: Bench, seed: int) -> dict[str, Any]:
    """(c) rkd+compile against rkd eager, same generator seed (forward only; this call compiles)."""
    out: dict[str, Any] = {}
    for key, method in (("eager", rkd), ("compiled", rkd_compiled)):
        method.generator = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        with bench.autocast():
            loss = method(bench.x, bench.y).loss.detach().float().item()
        out[f"loss_{key}"] = loss
        out[f"seconds_{key}_first_call"] = time.perf_counter() - start
        method.generator = None
    out["abs_diff"] = abs(out["loss_eager"] - out["loss_compiled"])
    out["what"] = "rkd+compile against rkd eager, as timed, same attack-start generator seed (loss only)"
    return out


def bf16_check(fp32: DistillMethod, bf16: DistillMethod, bench: Bench, bench_bf16: Bench, seed: int) -> dict[str, Any]:
    """(d) rkd+bf16 against rkd fp32, same generator seed (loss only; x_adv may differ: PGD's sign steps)."""
    out: dict[str, Any] = {}
    for key, method, b in (("fp32", fp32, bench), ("bf16", bf16, bench_bf16)):
        method.generator = torch.Generator().manual_seed(seed)
        with b.autocast():
            out[f"loss_{key}"] = method(b.x, b.y).loss.detach().float().item()
        method.generator = None
    out["abs_diff"] = abs(out["loss_fp32"] - out["loss_bf16"])
    out["rel_diff"] = out["abs_diff"] / max(abs(out["loss_fp32"]), 1e-12)
    out["what"] = "rkd+bf16 (train.amp: bf16) against rkd fp32, as timed, same attack-start generator seed"
    return out


# ---- timing ------------------------------------------------------------------------------------------------


@dataclass
class Variant:
    """A timed step and the number of recorded rounds it takes part in (the first ``rounds``)."""

    step: Step
    rounds: int
    kind: str  # "main" or "ablation"
    what: str
    flops_of: str | None = None  # the variant whose FLOP count this one shares (compiled: its eager twin)


@dataclass
class Times:
    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)


def run_rounds(
    bench: Bench, variants: dict[str, Variant], rounds: int, warmup: int, log: Callable[[str], None]
) -> Times:
    """Every variant once per round (while it has rounds left), order reversed every other round; the
    warm-up rounds are not recorded."""
    names = list(variants)
    t = Times(wall={n: [] for n in names}, cpu={n: [] for n in names})
    for r in range(warmup + rounds):
        rec = r - warmup
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            if rec >= variants[name].rounds:
                continue
            wall, cpu, _, _ = timed(bench, variants[name].step)
            if rec >= 0:
                t.wall[name].append(wall)
                t.cpu[name].append(cpu)
        tag = "warm-up" if rec < 0 else f"round {rec + 1}/{rounds}"
        shown = ", ".join(f"{n} {t.wall[n][-1]:.2f}s" for n in names if rec >= 0 and rec < variants[n].rounds)
        log(f"{tag}: {shown}")
    return t


def ratios(times: dict[str, list[float]], num: str, den: str) -> dict[str, Any] | None:
    """Per-round ``times[num][i] / times[den][i]`` over the rounds both took part in."""
    n = min(len(times[num]), len(times[den]))
    if n == 0:
        return None
    return per_round(lambda i: times[num][i] / times[den][i], n)


# ---- one student ------------------------------------------------------------------------------------------


def bench_student(
    args: argparse.Namespace, student: ModelChoice, teacher: ModelChoice, log: Callable[[str], None]
) -> dict[str, Any]:
    """Checks and timings of every method for one student."""
    device = torch.device("cpu")
    common = dict(
        batch=args.batch, steps=args.steps, num_classes=args.num_classes, device=device, seed=args.seed
    )
    nchw = make_bench(student, teacher, channels_last=False, **common)
    cl = make_bench(student, teacher, channels_last=True, **common)
    if args.data_npz is not None:
        x, y = npz_batch(args.data_npz, args.batch)
        nchw = dataclasses.replace(nchw, x=x, y=y)
        cl = dataclasses.replace(cl, x=x.contiguous(memory_format=torch.channels_last), y=y.clone())
    timed_bench = cl if args.channels_last else nchw
    for a, b in zip(nchw.student.state_dict().values(), cl.student.state_dict().values(), strict=True):
        if not torch.equal(a, b):
            raise RuntimeError("the NCHW and channels_last students differ")

    checks: dict[str, Any] = {}
    variants: dict[str, Variant] = {}
    for name in args.methods:
        log(f"{student.label()} {name}: loss checks")
        checks[name] = loss_checks(nchw, cl, name, args.seed + 7)
        rkd, rkd_opt = build_method(timed_bench, name)

        def ref_variant(
            bench: Bench, knobs: Knobs, method: DistillMethod = rkd
        ) -> tuple[str, Reference, Bench]:
            """The reference (rkd's hyper-parameters) on a private copy of ``bench``'s student."""
            ref = make_reference(method, copy.deepcopy(bench.student), bench.teacher, knobs, None)
            return knobs.label(bench.channels_last), ref, bench

        runs = [ref_variant(nchw, Knobs())]
        published = make_published(rkd, copy.deepcopy(nchw.student), nchw.teacher, args.published)
        if published is not None:
            variants[f"{name}/published"] = Variant(
                step=lambda p=published: p.step(nchw.x, nchw.y),
                rounds=args.rounds,
                kind="main",
                what=f"the published code itself ({PUBLISHED_SOURCE[name]}), the batch NCHW as torchvision's "
                "ToTensor gives it",
            )
            if "channels_last_batch" in args.ablations and args.ablation_rounds > 0:
                pub_cl = make_published(rkd, copy.deepcopy(nchw.student), nchw.teacher, args.published)
                x_cl = nchw.x.contiguous(memory_format=torch.channels_last)
                variants[f"{name}/published+channels_last_batch"] = Variant(
                    step=lambda p=pub_cl, x=x_cl: p.step(x, nchw.y),  # type: ignore[union-attr]
                    rounds=min(args.rounds, args.ablation_rounds),
                    kind="ablation",
                    what="the published code fed the same batch in channels_last strides (as a permuted HWC "
                    "array is): its NCHW models then run channels_last",
                )
        if args.ablation_rounds > 0:
            zero = has_zero_weight(rkd)
            if "frozen" in args.ablations:
                runs.append(ref_variant(nchw, Knobs(frozen=True)))
            if "channels_last" in args.ablations:
                runs.append(ref_variant(cl, Knobs()))
            if "no_grad_zero_weight" in args.ablations and zero:
                runs.append(ref_variant(nchw, Knobs(no_grad_zero_weight=True)))
            if "all" in args.ablations:
                runs.append(ref_variant(cl, Knobs(frozen=True, no_grad_zero_weight=zero)))
        for label, ref, bench in runs:
            main = label == "reference"
            variants[f"{name}/{label}"] = Variant(
                step=lambda ref=ref, bench=bench: ref.step(bench.x, bench.y),
                rounds=args.rounds if main else min(args.rounds, args.ablation_rounds),
                kind="main" if main else "ablation",
                what="the published code's step"
                if main
                else f"the reference with {label[len('reference+') :]}",
            )
        variants[f"{name}/rkd"] = Variant(
            step=lambda m=rkd, o=rkd_opt: train_step(timed_bench, m, o),
            rounds=args.rounds,
            kind="main",
            what=f"rkd's {name} ({'channels_last' if args.channels_last else 'NCHW'}, eager)",
        )
        if args.compile:
            compiled, compiled_opt = build_method(timed_bench, name)
            compiled.attack_model = compile_attack_model(compiled.student)
            log(f"{student.label()} {name}: compiling the attack forward (check c)")
            eager_twin, _ = build_method(timed_bench, name)
            checks[name]["compiled_vs_eager"] = compile_check(
                eager_twin, compiled, timed_bench, args.seed + 9
            )
            log(
                f"  first compiled call {checks[name]['compiled_vs_eager']['seconds_compiled_first_call']:.1f}s"
            )
            variants[f"{name}/rkd+compile"] = Variant(
                step=lambda m=compiled, o=compiled_opt: train_step(timed_bench, m, o),
                rounds=args.rounds,
                kind="main",
                what=f"rkd's {name} with train.compile_attack",
                flops_of=f"{name}/rkd",
            )
        if args.bf16:
            bf16_bench = dataclasses.replace(timed_bench, amp="bf16")
            half, half_opt = build_method(bf16_bench, name)
            fp32_twin, _ = build_method(timed_bench, name)
            checks[name]["bf16_vs_fp32"] = bf16_check(fp32_twin, half, timed_bench, bf16_bench, args.seed + 11)
            variants[f"{name}/rkd+bf16"] = Variant(
                step=lambda m=half, o=half_opt, b=bf16_bench: train_step(b, m, o),
                rounds=args.rounds,
                kind="main",
                what=f"rkd's {name} with train.amp: bf16 (bf16 autocast on CPU)",
                flops_of=f"{name}/rkd",
            )
        c = checks[name]["same_start_noise"]
        log(f"  loss rkd {c['loss_rkd']:.8f} reference {c['loss_reference']:.8f} |diff| {c['abs_diff']:.2e}")

    flops: dict[str, int] = {}
    for key, v in variants.items():
        if v.flops_of is None:
            flops[key] = count_flops(v.step)
    for key, v in variants.items():
        if v.flops_of is not None:
            flops[key] = flops[v.flops_of]
    if args.flops_only:
        return {"student": student.label(), "gflop_per_step": {k: n / 1e9 for k, n in flops.items()}}
    log(f"{student.label()}: timing {len(variants)} variants: {', '.join(variants)}")
    times = run_rounds(timed_bench, variants, args.rounds, args.warmup, log)
    results: dict[str, Any] = {}
    for name in args.methods:
        ref_key, pub_key = f"{name}/reference", f"{name}/published"
        per_variant: dict[str, Any] = {}
        for key, v in variants.items():
            if not key.startswith(f"{name}/"):
                continue
            per_variant[key.split("/", 1)[1]] = {
                "what": v.what,
                "kind": v.kind,
                "rounds": len(times.wall[key]),
                "wall_seconds": times.wall[key],
                "cpu_seconds": times.cpu[key],
                "seconds": summary(times.wall[key]),
                "cpu": summary(times.cpu[key]),
                "images_per_second": args.batch / statistics.median(times.wall[key]),
                "gflop_per_step": flops[key] / 1e9,
                "gflop_per_second": flops[key] / 1e9 / statistics.median(times.wall[key]),
                "flops_counted_on": v.flops_of or key,
                "speedup_over_reference": ratios(times.wall, ref_key, key),
                "speedup_over_reference_cpu_time": ratios(times.cpu, ref_key, key),
                "speedup_over_published": ratios(times.wall, pub_key, key) if pub_key in times.wall else None,
            }
        rkd_key = f"{name}/rkd"
        extra = (
            {"rkd_over_rkd_compile": ratios(times.wall, rkd_key, f"{name}/rkd+compile")}
            if args.compile
            else {}
        )
        if args.bf16:
            extra["rkd_over_rkd_bf16"] = ratios(times.wall, rkd_key, f"{name}/rkd+bf16")
        results[name] = {"checks": checks[name], "variants": per_variant, **extra}
    return {"student": student.label(), "methods": results}


# ---- the report --------------------------------------------------------------------------------------------


def _cell(s: dict[str, float] | None, digits: int) -> str:
    if s is None:
        return ""
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


CHECKS = (
    ("same_start_noise", "(a) same generator seed"),
    ("same_start_bitwise", "(a') bitwise same start"),
    ("injected_x_adv_nchw", "(b) x_adv injected, NCHW"),
    ("injected_x_adv_channels_last", "(b) x_adv injected, channels_last"),
    ("compiled_vs_eager", "(c) compiled vs eager"),
    ("bf16_vs_fp32", "(d) bf16 autocast vs fp32"),
)
CHANGE_TEXT = {
    "frozen": "parameters frozen during the attack (rkd's `pgd` switches `requires_grad` off): the attack's "
    "forwards record no weight-gradient bookkeeping, and its backward computes input gradients only",
    "channels_last": "models and inputs channels_last (NHWC), the rkd loop's CPU default: oneDNN's NHWC "
    "convolution and batch-norm kernels instead of the NCHW ones",
    "no_grad_zero_weight": "a loss term of weight 0 computed under `no_grad` (ARD at alpha = 1: the clean "
    "forward runs for its batch-norm statistics, but no backward through the student runs for it)",
    "bf16": "`train.amp: bf16`: the step's convolutions and matrix products in bfloat16 (oneDNN; native on "
    "CPUs with AMX-BF16 or AVX512-BF16), a different arithmetic from the fp32 reference (check d)",
    "compile": "`train.compile_attack`: the attack's forward (and, through AOTAutograd, its input-gradient "
    "backward) compiled by torch.compile/Inductor (fused elementwise and batch-norm kernels)",
}


def _ratio_lists(num: list[float], den: list[float]) -> dict[str, Any]:
    """Per-round num[i] / den[i] over the rounds both took part in (the first ones)."""
    n = min(len(num), len(den))
    return per_round(lambda i: num[i] / den[i], n)


def explain(method: dict[str, Any]) -> list[str]:
    """What makes the difference, from the measured single-change speed-ups (ratios per round, over the rounds
    the ablations took part in)."""
    v = method["variants"]
    ref_t, rkd_t = v["reference"]["wall_seconds"], v["rkd"]["wall_seconds"]
    lines = []
    single = {k.split("+", 1)[1]: v[k] for k in v if k.startswith("reference+") and k.count("+") == 1}
    product = 1.0
    for change, r in single.items():
        s = r["speedup_over_reference"]
        product *= s["median"]
        lines.append(f"  - {change}: {_cell(s, 2)}x over the reference alone: {CHANGE_TEXT[change]}.")
    combined = [k for k in v if k.count("+") > 1 and k.startswith("reference")]
    if single:
        n = max(len(r["wall_seconds"]) for r in single.values())
        rkd_same = _ratio_lists(ref_t[:n], rkd_t)
        lines.append(
            f"  - product of the single-change speed-ups: {product:.2f}x; rkd in the same {n} round(s): "
            f"{_cell(rkd_same, 2)}x."
        )
    for k in combined:
        s = v[k]["speedup_over_reference"]
        rest = _ratio_lists(v[k]["wall_seconds"], rkd_t)
        lines.append(
            f"  - all of them together (`{k}`): {_cell(s, 2)}x; rkd's speed-up over that, per round: "
            f"{_cell(rest, 2)}x (what rkd's step does beyond these changes: in-place projection, the start "
            "drawn in one expression, an input range check)."
        )
    if "rkd+compile" in v:
        r = method.get("rkd_over_rkd_compile")
        lines.append(
            f"  - compile: rkd+compile is {_cell(r, 2)}x faster than rkd eager (per-round rkd / rkd+compile): "
            f"{CHANGE_TEXT['compile']}."
        )
    if "rkd+bf16" in v:
        r = method.get("rkd_over_rkd_bf16")
        lines.append(
            f"  - bf16: rkd+bf16 is {_cell(r, 2)}x faster than rkd fp32 (per-round rkd / rkd+bf16): "
            f"{CHANGE_TEXT['bf16']}."
        )
    return lines


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    b = cfg["batch"]
    lines = [
        "# rkd's training step vs the published research code's step (ARD, RSLAD)",
        "",
        f"{report['date']}; {report['machine']['cpu_model'] or report['machine']['processor']}"
        + (f" ({', '.join(report['machine']['cpu_flags'])})" if report["machine"].get("cpu_flags") else "")
        + f", {report['threads']} thread(s); torch {report['torch']}; CPU.",
        f"Teacher {cfg['teacher']}, batch {b}, m = {cfg['steps']} attack steps; {cfg['rounds']} rounds after "
        f"{cfg['warmup']} warm-up (ablations: the first {cfg['ablation_rounds']}); median [min, max].",
        "All variants of a student run interleaved in the same rounds of one run (order reversed every other "
        "round); every ratio is computed per round, then its median [min, max] is given.",
    ]
    if cfg.get("note"):
        lines += ["", f"Note: {cfg['note']}"]
    lines += [
        "",
        f"Command: `{report['command']}`",
        "",
        f"Reference: ARD as {ARD_SOURCE}; RSLAD as {RSLAD_SOURCE}: fp32 eager, NCHW, parameters not frozen "
        "during the attack, `torch.autograd.grad` per attack step, every loss term in the graph. rkd: the "
        f"registered method from its recipe section, {'channels_last' if cfg['channels_last'] else 'NCHW'}, "
        "as `rkd.train.loop` runs a step. Target: rkd at least "
        f"{report['target_speedup']:g}x faster than the reference.",
        "",
        "## Step time",
        "",
        "| student | method | variant | wall s/step | img/s | GFLOP/step | GFLOP/s | speed-up over the "
        "published code (wall) | speed-up over the reference (wall) | speed-up over the reference (CPU time) | "
        "rounds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for st in report["students"]:
        for name, m in st["methods"].items():
            for label, r in m["variants"].items():
                tag = f"**{label}**" if r["kind"] == "main" else label
                gflop = f"{r['gflop_per_step']:.4g}" if "gflop_per_step" in r else ""
                rate = f"{r['gflop_per_second']:.3g}" if "gflop_per_second" in r else ""
                lines.append(
                    f"| {st['student']} | {name} | {tag} | {_cell(r['seconds'], 2)} | "
                    f"{r['images_per_second']:.1f} | {gflop} | {rate} | "
                    f"{_cell(r.get('speedup_over_published'), 2)} | {_cell(r['speedup_over_reference'], 2)} | "
                    f"{_cell(r['speedup_over_reference_cpu_time'], 2)} | {r['rounds']} |"
                )
    lines += [
        "",
        "GFLOP/step: `torch.utils.flop_counter`'s formulas summed over one step of the variant (convolutions and "
        "matrix products, forward and backward, 2 FLOPs per multiply-add); compiled and bf16 variants carry "
        "their eager fp32 twin's count (the same operations), and a grouped convolution's weight gradient is "
        "counted per group (torch's formula counts it as ungrouped). GFLOP/s: that count over the median wall "
        "time.",
        *([f"Note: {report['flop_count_note']}."] if report.get("flop_count_note") else []),
    ]
    lines += [
        "",
        "## Loss agreement (checked before timing)",
        "",
        "(a) rkd and the reference, both NCHW fp32, the attack start drawn from identically seeded generators "
        "(RSLAD: bitwise the same start; ARD: the published `x + U(-eps, eps)` and rkd's `u * 2 eps - eps + x` "
        "differ by an ulp); (a') ARD with the start drawn by rkd's arithmetic (bitwise the same start); "
        "(b) rkd with the reference's x_adv injected in place of its attack, NCHW and channels_last (as "
        "timed), against the reference's loss; (c) rkd+compile vs rkd eager as timed, same seed; (d) rkd+bf16 vs "
        "rkd fp32 as timed, same seed (a different arithmetic: its loss differs by bf16 rounding and by the "
        "x_adv the rounding leads to). Gradients: "
        "the student's parameter gradients after backward, max |diff| and ||diff|| / ||grad|| over all "
        "parameters. The sign steps of PGD turn a rounding difference in a near-zero input gradient into a "
        "whole step of 2/255, and in ARD's train-mode attack batch-norm statistics couple the samples, so "
        "x_adv can drift apart from ulp-level differences; (a') and (b) check the loss itself.",
        "",
        "| student | method | check | loss rkd | loss reference | abs diff | grad max diff (max grad) | "
        "grad rel. L2 diff | x_adv max diff (share of pixels) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for st in report["students"]:
        for name, m in st["methods"].items():
            for key, tag in CHECKS:
                c = m["checks"].get(key)
                if c is None:
                    continue
                if key == "compiled_vs_eager":
                    lines.append(
                        f"| {st['student']} | {name} | {tag} | {c['loss_compiled']:.8f} | "
                        f"{c['loss_eager']:.8f} (eager) | {c['abs_diff']:.2e} | | | |"
                    )
                    continue
                if key == "bf16_vs_fp32":
                    lines.append(
                        f"| {st['student']} | {name} | {tag} | {c['loss_bf16']:.8f} | "
                        f"{c['loss_fp32']:.8f} (fp32) | {c['abs_diff']:.2e} ({c['rel_diff']:.1%}) | | | |"
                    )
                    continue
                adv = (
                    f"{c['x_adv_max_abs_diff']:.2e} ({c['x_adv_fraction_differing']:.1e})"
                    if "x_adv_max_abs_diff" in c
                    else ""
                )
                lines.append(
                    f"| {st['student']} | {name} | {tag} | {c['loss_rkd']:.8f} | {c['loss_reference']:.8f} | "
                    f"{c['abs_diff']:.2e} | {c['grad_max_abs_diff']:.1e} ({c['grad_max_abs']:.1e}) | "
                    f"{c['grad_rel_l2_diff']:.1e} | {adv} |"
                )
    lines += ["", "## What makes the difference", ""]
    for st in report["students"]:
        for name, m in st["methods"].items():
            target = report["target_speedup"]
            parts = []
            for label in ("rkd", "rkd+compile", "rkd+bf16"):
                if label in m["variants"]:
                    r = m["variants"][label]["speedup_over_reference"]
                    verdict = "meets" if r["median"] >= target else "below"
                    parts.append(
                        f"{label} {_cell(r, 2)}x over the reference ({verdict} the {target:g}x target)"
                    )
            lines.append(f"- {st['student']}, {name}: " + "; ".join(parts) + ".")
            lines += explain(m)
    comp_times = [
        (st["student"], n, m["checks"]["compiled_vs_eager"]["seconds_compiled_first_call"])
        for st in report["students"]
        for n, m in st["methods"].items()
        if "compiled_vs_eager" in m["checks"]
    ]
    if comp_times:
        lines += [
            "",
            "First call of rkd+compile (compiles; not in the timings): "
            + "; ".join(f"{s} {n} {t:.0f} s" for s, n, t in comp_times)
            + f" (TORCHINDUCTOR_CACHE_DIR={report['env'].get('TORCHINDUCTOR_CACHE_DIR')}"
            + (
                f", {report['inductor_cache_files_at_start']} files in it at the start"
                if "inductor_cache_files_at_start" in report
                else ""
            )
            + ").",
        ]
    return "\n".join(lines) + "\n"


# ---- main --------------------------------------------------------------------------------------------------


def parse_students(text: str) -> list[ModelChoice]:
    """``"mobilenet_v2:0.5,resnet18:0.125"`` -> model choices (name:width)."""
    out = []
    for item in text.split(","):
        name, _, width = item.strip().partition(":")
        out.append(ModelChoice(name, float(width) if width else 1.0))
    return out


def parse_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(choices)}")
        return items

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = report_parser(__doc__, "benchmarks/results/reference_step-cpu.json")
    p.add_argument(
        "--students",
        type=parse_students,
        default=parse_students("mobilenet_v2:0.5,resnet18:0.125"),
        help="comma-separated name:width",
    )
    p.add_argument("--teacher", default="resnet18")
    p.add_argument("--teacher-width", type=float, default=0.25)
    p.add_argument("--methods", type=parse_list(METHOD_NAMES), default=list(METHOD_NAMES))
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", "-m", type=int, default=10, help="attack steps m")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--ablations",
        type=parse_list(ABLATIONS),
        default=list(ABLATIONS),
        help="single changes to the reference to time (comma-separated)",
    )
    p.add_argument(
        "--ablation-rounds", type=int, default=2, help="recorded rounds of the ablations (0: none)"
    )
    p.add_argument("--no-compile", dest="compile", action="store_false", help="leave out rkd+compile")
    p.add_argument(
        "--bf16",
        action="store_true",
        help="also time rkd with train.amp: bf16 (bf16 autocast on CPU; a different arithmetic, check d)",
    )
    p.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="time rkd in NCHW instead of its channels_last default",
    )
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (set OMP_NUM_THREADS too)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--published-rslad",
        type=Path,
        default=None,
        metavar="DIR",
        help="a zibojia/RSLAD checkout: also time its rslad_inner_loss and loop body (variant 'published')",
    )
    p.add_argument(
        "--published-ard",
        type=Path,
        default=None,
        metavar="DIR",
        help="a goldblum/AdversariallyRobustDistillation checkout: also time its AttackPGD and train body",
    )
    p.add_argument(
        "--data-npz",
        type=Path,
        default=None,
        metavar="NPZ",
        help="real images instead of uniform noise: an .npz with x (N, H, W, 3) uint8 and y (N,); the first "
        "--batch rows, converted as torchvision's ToTensor does (NCHW, /255)",
    )
    p.add_argument("--note", default="", help="a line about the machine's state, written into the report")
    p.add_argument(
        "--flops-only",
        action="store_true",
        help="count every variant's FLOPs (one step each), print them as JSON and stop (no timing)",
    )
    p.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="JSON",
        help="only rewrite the Markdown of an existing report",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    args.published = {"ard": args.published_ard, "rslad": args.published_rslad}
    if args.render is not None:
        args.render.with_suffix(".md").write_text(markdown(json.loads(args.render.read_text())))
        return
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/inductor-cache")
    cache = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    cache_files = (
        sum(1 for f in cache.rglob("*") if f.is_file()) if cache.is_dir() else 0
    )  # 0: a cold compile
    pin_threads(args.threads)
    t0 = time.perf_counter()
    log = stderr_log(t0)
    teacher = ModelChoice(args.teacher, args.teacher_width)
    students = [bench_student(args, s, teacher, log) for s in args.students]
    if args.flops_only:
        print(json.dumps(students, indent=1))
        return
    report = {
        **report_header("reference_step", ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TORCHINDUCTOR_CACHE_DIR")),
        "target_speedup": TARGET_SPEEDUP,
        "inductor_cache_files_at_start": cache_files,
        "sources": {"ard": ARD_SOURCE, "rslad": RSLAD_SOURCE},
        "config": {
            "students": [s.label() for s in args.students],
            "teacher": teacher.label(),
            "methods": args.methods,
            "batch": args.batch,
            "steps": args.steps,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "ablations": args.ablations,
            "ablation_rounds": min(args.rounds, args.ablation_rounds),
            "compile": args.compile,
            "channels_last": args.channels_last,
            "bf16": args.bf16,
            "num_classes": args.num_classes,
            "seed": args.seed,
            "data": f"the first {args.batch} rows of {args.data_npz}" if args.data_npz else "uniform random images",
            "published": {k: str(v) if v else None for k, v in args.published.items()},
            "optimizer": f"SGD lr 0.1 momentum 0.9 weight decay {WEIGHT_DECAY} (both)",
            "order": "every variant once per round, order reversed every other round; one group per student",
            "note": args.note,
        },
        "students": students,
        "total_seconds": time.perf_counter() - t0,
    }
    md = markdown(report)
    write_report(args.out, report, md, allow_nan=False)
    log(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    print(md)


if __name__ == "__main__":
    main()
