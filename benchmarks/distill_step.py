"""Speed of one `rkd distill` training step for every method, and what the adversarial-path step costs.

What it measures, in one run, with the same student, teacher, batch B and attack steps m for every method:

1. ``methods``: images per second of one full training step (the method's forward with its attack, the
   backward, the SGD step; student in train mode, as in ``rkd.train.loop``) of every registered method, each
   built from its recipe section (``DistillMethodConfig`` with ``steps = m``). IAD is measured after its
   warm-up (``set_epoch(warmup_epochs)``), where it adds its introspection term; before that it is ARD.
2. ``adv_path_vs_reference``: adv_path's step (both branches as one PGD batch of 2B; one teacher pass and one
   student pass over all iterates) against a slow reference step written here the straightforward way: one PGD
   loop per branch on B samples (same start noise and targets, drawn from an identically seeded generator in
   the fast method's order), then ``reference_loss`` of ``tests/unit/test_adv_path.py`` (separate teacher and
   student calls per iterate and branch), backward and SGD step. The two losses are compared with the student
   in eval mode (batch-norm batch statistics depend on how inputs are batched); speed is compared in train
   mode. A third variant is adv_path with ``max_batch = B`` (its alignment pass in chunks of B): on a CPU the
   single pass over (2m+1)B inputs allocates tensors of tens of MB that glibc maps fresh from the kernel on
   every call (page faults, pages zeroed), which the per-variant system time and minor page faults show.
3. ``adv_path_parts``: adv_path's step against the sum of its parts timed alone: (a) the 2B-batch m-step
   attack (``AdvPath.craft``), (b) the teacher's no-grad pass over the (2m+1)B inputs, (c) the student's
   forward and backward over them, (d) the SGD step.
4. ``adv_path_vs_rslad``: adv_path's step time over RSLAD's at the same m, next to the ratio of multiply-adds
   the two methods imply (MACs of Conv2d/Linear layers counted with forward hooks; the formula is written to
   the output).
5. ``memory_estimate``: peak memory of the adv_path step for a full ResNet-18 student and a WideResNet-34-10
   teacher at batch 128, m = 10, ESTIMATED from CPU runs: the step's peak resident-memory growth measured at
   a few small (B, m) points, each in a fresh subprocess, fitted linearly in (2m+1)B and extrapolated.

How: every variant runs once as a warm-up, then ``--repeats`` rounds; inside a round each variant runs once,
in an order reversed every other round (A, B, ..., B, A, ...), so that background load on a shared machine
hits all variants alike. Reported: every raw time (wall, process CPU, system, minor page faults), the median
and min/max over rounds, and ratios computed per round (then their median and min/max). Data are uniform
random images with random labels, models untrained (a step's cost depends on neither). Inputs and models are
channels_last unless ``--no-channels-last`` (the training loop's default); on CUDA the step runs under bf16
autocast, as the training loop does.

Run (the machine's threads are shared, so pin them)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distill_step.py \
        --out benchmarks/results/distill_step-cpu.json

It writes the JSON (machine, torch version, threads, date, command, raw timings) and a Markdown summary beside
it (same name, ``.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _common import pin_threads, report_header, report_parser, stderr_log, write_report
from _step import (
    FLOP_MODEL,
    MALLOC_MMAP_THRESHOLD,
    WEIGHT_DECAY,
    Bench,
    ModelChoice,
    ReferenceAdvPath,
    Step,
    build_method,
    hwm_bytes,
    implied_macs,
    load_reference_loss,
    macs_per_image,
    make_bench,
    per_round,
    rss_bytes,
    summary,
    timed,
    train_step,
    trim,
)

from rkd.distill import METHODS, DistillMethod
from rkd.distill.adv_path import AdvPath
from rkd.distill.losses import kl_per_sample, soft_targets

PART_NAMES = ("craft", "teacher", "student", "sgd")
REFERENCE = "adv_path_reference"
CHUNKED = "adv_path_chunked"  # adv_path with max_batch = B: the alignment pass in chunks of B


def equality_check(bench: Bench, reference_loss: Callable[..., torch.Tensor]) -> dict[str, Any]:
    """Fast and reference adv_path on one student in EVAL mode, same generator seed: paths, loss, grads."""
    method, _ = build_method(bench, "adv_path")
    assert isinstance(method, AdvPath)
    method.eval()
    reference = ReferenceAdvPath(method, bench.num_classes, reference_loss)
    x, y = bench.x, bench.y

    def run(fn: Callable[[], torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
        method.generator = torch.Generator(device=bench.device).manual_seed(bench.seed + 7)
        method.student.zero_grad(set_to_none=True)
        with bench.autocast():
            loss = fn().float()
        loss.backward()
        grads = [p.grad.detach().clone() for p in method.student.parameters() if p.grad is not None]
        return loss.item(), grads

    loss_fast, g_fast = run(lambda: method(x, y).loss)
    loss_ref, g_ref = run(lambda: reference.loss(x, y))
    method.generator = torch.Generator(device=bench.device).manual_seed(bench.seed + 7)
    with torch.no_grad():
        teacher_clean = method.teacher_logits(x)
    paths_fast = method.craft(x, y, teacher_clean)
    method.generator = torch.Generator(device=bench.device).manual_seed(bench.seed + 7)
    paths_ref = reference.craft(x, y)
    assert paths_fast.t is not None and paths_ref.t is not None
    assert paths_fast.targets is not None and paths_ref.targets is not None
    g_scale = max(float(g.abs().max()) for g in g_fast)
    g_diff = max(float((a - b).abs().max()) for a, b in zip(g_fast, g_ref, strict=True))
    return {
        "student_mode": "eval",
        "loss_fast": loss_fast,
        "loss_reference": loss_ref,
        "abs_diff": abs(loss_fast - loss_ref),
        "rel_diff": abs(loss_fast - loss_ref) / max(abs(loss_ref), 1e-30),
        "targets_equal": bool(torch.equal(paths_fast.targets, paths_ref.targets)),
        "path_max_abs_diff": max(
            float((paths_fast.u - paths_ref.u).abs().max()), float((paths_fast.t - paths_ref.t).abs().max())
        ),
        "grad_max_abs_diff": g_diff,
        "grad_max_abs": g_scale,
    }


# ---- the parts of the adv_path step ------------------------------------------------------------------------


@dataclass
class PartInputs:
    """What the parts of adv_path's step consume, computed once: the (2m+1)B alignment inputs and the
    teacher's log-probabilities there."""

    teacher_clean: torch.Tensor
    inputs: torch.Tensor
    teacher_log_probs: torch.Tensor


def part_inputs(bench: Bench, method: AdvPath) -> PartInputs:
    with torch.no_grad():
        teacher_clean = method.teacher_logits(bench.x)
    paths = method.craft(bench.x, bench.y, teacher_clean)
    assert paths.t is not None
    iterates = [p.reshape(-1, *p.shape[2:]) for p in (paths.u, paths.t)]
    inputs = torch.cat([bench.x, *iterates]).detach()
    if bench.channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        log_probs = soft_targets(method.teacher_logits(inputs))
    return PartInputs(teacher_clean=teacher_clean, inputs=inputs, teacher_log_probs=log_probs)


def part_steps(
    bench: Bench, method: AdvPath, optimizer: torch.optim.Optimizer, inputs: PartInputs
) -> dict[str, Step]:
    """adv_path's step in four parts, each runnable alone (``student`` leaves the gradients ``sgd`` uses)."""

    def craft() -> None:
        with bench.autocast():
            method.craft(bench.x, bench.y, inputs.teacher_clean)

    def teacher() -> None:
        method.teacher_logits(inputs.inputs)

    def student() -> None:
        optimizer.zero_grad(set_to_none=True)
        with bench.autocast():
            logits = method.student(inputs.inputs)
        kl_per_sample(inputs.teacher_log_probs, logits).mean().backward()

    def sgd() -> None:
        optimizer.step()

    return {"craft": craft, "teacher": teacher, "student": student, "sgd": sgd}


# ---- timing ------------------------------------------------------------------------------------------------


@dataclass
class Timings:
    """Per variant, one entry per recorded round: wall seconds, process CPU seconds (user + system, all
    threads; less sensitive than wall time to other processes on the machine), system seconds and minor page
    faults (first touches of freshly mapped memory)."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    system: dict[str, list[float]]
    minor_faults: dict[str, list[int]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "wall_seconds": self.wall,
            "cpu_seconds": self.cpu,
            "system_seconds": self.system,
            "minor_page_faults": self.minor_faults,
        }


def run_rounds(
    bench: Bench, variants: dict[str, Step], repeats: int, warmup: int, log: Callable[[str], None]
) -> Timings:
    """Every variant once per round, order reversed every other round; warm-up rounds are not recorded."""
    names = list(variants)
    t = Timings(
        wall={n: [] for n in names},
        cpu={n: [] for n in names},
        system={n: [] for n in names},
        minor_faults={n: [] for n in names},
    )
    for r in range(warmup + repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            wall, cpu, system, faults = timed(bench, variants[name])
            if r >= warmup:
                t.wall[name].append(wall)
                t.cpu[name].append(cpu)
                t.system[name].append(system)
                t.minor_faults[name].append(faults)
        tag = "warm-up" if r < warmup else f"round {r - warmup + 1}/{repeats}"
        shown = ", ".join(f"{n} {t.wall[n][-1]:.2f}s" if r >= warmup else n for n in names[:4])
        log(f"{tag}: {shown} ...")
    return t


def relative_to(times: dict[str, list[float]], name: str, base: str) -> Callable[[int], float]:
    """Round i -> times[name][i] / times[base][i]."""
    return lambda i: times[name][i] / times[base][i]


# ---- memory (one subprocess per point) ---------------------------------------------------------------------


def memory_point(args: argparse.Namespace, batch: int, steps: int) -> dict[str, Any]:
    """Peak resident-memory growth of one adv_path step (after a warm-up step), in this process."""
    device = torch.device(args.device)
    bench = make_bench(
        ModelChoice(args.memory_student),
        ModelChoice(args.memory_teacher),
        batch=batch,
        steps=steps,
        num_classes=args.num_classes,
        device=device,
        channels_last=args.channels_last,
        seed=args.seed,
    )
    method, optimizer = build_method(bench, "adv_path")
    start = time.perf_counter()
    train_step(bench, method, optimizer)  # warm-up: momentum buffers, kernel caches
    trim()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        train_step(bench, method, optimizer)
        bench.sync()
        peak, how = torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    else:
        before = rss_bytes()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            how = "VmHWM after /proc/self/clear_refs=5, minus RSS before the step"
        except OSError:
            how = "ru_maxrss (process peak; may include model construction), minus RSS before the step"
        train_step(bench, method, optimizer)
        peak = hwm_bytes()
    return {
        "batch": batch,
        "steps": steps,
        "inputs": (2 * steps + 1) * batch,
        "before_bytes": before,
        "peak_bytes": peak,
        "growth_bytes": peak - before,
        "how": how,
        "seconds_two_steps": time.perf_counter() - start,
    }


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Least squares y = a + c x; returns (a, c, R^2)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    c = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    a = my - c * mx
    ss_res = sum((y - a - c * x) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return a, c, 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0


def memory_estimate(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """Measure each (B, m) point in a fresh subprocess, fit growth = a + c (2m+1) B, extrapolate."""
    points: list[dict[str, Any]] = []
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MALLOC_MMAP_THRESHOLD))
    for b, m in args.memory_points:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--memory-point",
            f"{b}x{m}",
            "--memory-student",
            args.memory_student,
            "--memory-teacher",
            args.memory_teacher,
            "--device",
            args.device,
            "--threads",
            str(args.threads),
            "--num-classes",
            str(args.num_classes),
            "--seed",
            str(args.seed),
        ] + ([] if args.channels_last else ["--no-channels-last"])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        point = json.loads(out.stdout.strip().splitlines()[-1])
        points.append(point)
        log(
            f"memory B={b} m={m}: growth {point['growth_bytes'] / 2**20:.0f} MiB "
            f"({point['seconds_two_steps']:.0f}s)"
        )
    xs = [float(p["inputs"]) for p in points]
    ys = [float(p["growth_bytes"]) for p in points]
    a, c, r2 = linear_fit(xs, ys)
    for p in points:
        p["fitted_growth_bytes"] = a + c * p["inputs"]
    target_inputs = (2 * args.memory_m + 1) * args.memory_batch
    growth = a + c * target_inputs
    torch.manual_seed(args.seed)
    student = ModelChoice(args.memory_student).build(args.num_classes)
    teacher = ModelChoice(args.memory_teacher).build(args.num_classes)
    s_bytes = sum(p.numel() * p.element_size() for p in student.parameters())
    t_bytes = sum(p.numel() * p.element_size() for p in teacher.parameters())
    static = (
        2 * s_bytes + t_bytes
    )  # student weights + SGD momentum, teacher weights (gradients are in growth)
    gib = 2**30
    return {
        "kind": "ESTIMATE from CPU runs (no GPU was used)"
        if args.device == "cpu"
        else f"measured on {args.device}",
        "student": ModelChoice(args.memory_student).label(),
        "teacher": ModelChoice(args.memory_teacher).label(),
        "target": {
            "batch": args.memory_batch,
            "steps": args.memory_m,
            "inputs_2m_plus_1_times_B": target_inputs,
        },
        "points": points,
        "fit": {"model": "growth = a + c * (2m+1) * B", "a_bytes": a, "c_bytes_per_input": c, "r2": r2},
        "static_bytes": {"student_weights": s_bytes, "sgd_momentum": s_bytes, "teacher_weights": t_bytes},
        "estimate_fp32_gib": (static + growth) / gib,
        "estimate_growth_fp32_gib": growth / gib,
        "estimate_bf16_gib": (static + growth / 2) / gib,
        "method": (
            f"Peak resident memory growth of one adv_path step (after a warm-up step), measured on the CPU "
            f"in a fresh subprocess per (B, m) point (glibc mmap threshold fixed at {MALLOC_MMAP_THRESHOLD} "
            f"bytes and malloc_trim before the step, so RSS follows live tensors), fitted by least squares "
            f"as a + c (2m+1) B and extrapolated to B = {args.memory_batch}, m = {args.memory_m}; plus the "
            f"static weights (student weights, SGD momentum, teacher weights). The growth holds the "
            f"activations kept for the backward, the transient teacher activations and the gradients. On a "
            f"GPU under bf16 autocast the activation memory is about half of fp32 ('estimate_bf16_gib' "
            f"halves the whole growth; the CUDA caching allocator and cuDNN workspaces add to either)."
        ),
    }


# ---- the report --------------------------------------------------------------------------------------------


def _cell(s: dict[str, float], digits: int) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


def _costs_cells(r: dict[str, Any]) -> str:
    return (
        f"{r['cpu_seconds']['median']:.3f} ({r['system_seconds']['median']:.3f}) | "
        f"{r['minor_page_faults']:.0f}"
    )


def markdown(report: dict[str, Any]) -> str:
    cfg, sec = report["config"], report["sections"]
    b = cfg["batch"]
    lines = [
        "# `rkd distill` step speed",
        "",
        f"{report['date']}; {report['machine']['cpu_model'] or report['machine']['processor']}, "
        f"{report['threads']} thread(s); torch {report['torch']}; device {cfg['device']}.",
        f"Student {cfg['student']}, teacher {cfg['teacher']}, batch {b}, m = {cfg['steps']}; "
        f"{cfg['repeats']} rounds after {cfg['warmup']} warm-up, variants interleaved; median [min, max].",
        "",
        f"Command: `{report['command']}`",
        "",
        "## 1. Full training step per method (train mode)",
        "",
        "| method | wall s/step | img/s | step time / adv_path's | CPU s (system s) | minor page faults |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in sec["methods"].items():
        rel = r["relative_to_adv_path"]
        lines.append(
            f"| {name} | {_cell(r['seconds'], 3)} | {b / r['seconds']['median']:.0f} | {_cell(rel, 2)} | "
            f"{_costs_cells(r)} |"
        )
    ref = sec["adv_path_vs_reference"]
    eq = ref["equality_eval_mode"]
    rows = [
        ("fast: 2B attack batch, one alignment pass (the registered adv_path)", ref["fast"]),
        ("reference: a PGD loop per branch, a teacher and a student call per iterate", ref["reference"]),
        (f"fast, alignment pass chunked ({ref['fast_chunked']['what']})", ref["fast_chunked"]),
    ]
    lines += [
        "",
        "## 2. adv_path fast vs straightforward reference (train mode)",
        "",
        "| step | wall s/step | img/s | CPU s (system s) | minor page faults |",
        "|---|---|---|---|---|",
        *(
            f"| {label} | {_cell(r['seconds'], 3)} | {b / r['seconds']['median']:.0f} | {_costs_cells(r)} |"
            for label, r in rows
        ),
        "",
        f"Speed-up reference/fast, wall time: **{_cell(ref['speedup'], 2)}x**; CPU time: "
        f"{_cell(ref['speedup_cpu_time'], 2)}x (target >= {ref['target_speedup']}x).",
        f"Speed-up reference/fast-chunked, wall time: {_cell(ref['speedup_chunked'], 2)}x; CPU time: "
        f"{_cell(ref['speedup_chunked_cpu_time'], 2)}x.",
        f"Same loss (student in eval mode): fast {eq['loss_fast']:.8f}, "
        f"reference {eq['loss_reference']:.8f}, "
        f"|diff| {eq['abs_diff']:.2e}; targets equal: {eq['targets_equal']}; paths max |diff| "
        f"{eq['path_max_abs_diff']:.2e}; gradients max |diff| {eq['grad_max_abs_diff']:.2e} "
        f"(max |grad| {eq['grad_max_abs']:.2e}).",
    ]
    parts = sec["adv_path_parts"]
    lines += [
        "",
        "## 3. adv_path step vs the sum of its parts timed alone",
        "",
        "| part | wall s | share of the sum | CPU s (system s) | minor page faults |",
        "|---|---|---|---|---|",
    ]
    for name in PART_NAMES:
        p = parts["parts"][name]
        lines.append(f"| {p['what']} | {_cell(p['seconds'], 3)} | {p['share']:.1%} | {_costs_cells(p)} |")
    ratio = parts["step_over_sum"]
    lines += [
        f"| sum of parts | {parts['sum_seconds_median']:.3f} | | | |",
        f"| the step | {parts['step_seconds']['median']:.3f} | | | |",
        "",
        f"Step / sum(parts): **{ratio['median']:.2f}** [{ratio['min']:.2f}, {ratio['max']:.2f}] "
        f"(target <= {parts['target']}).",
    ]
    rs = sec["adv_path_vs_rslad"]
    meas, macs = rs["measured_time_ratio"], rs["macs"]
    lines += [
        "",
        "## 4. adv_path vs RSLAD at the same m",
        "",
        f"MACs per image: student {macs['student_macs_per_image'] / 1e6:.1f} M, teacher "
        f"{macs['teacher_macs_per_image'] / 1e6:.1f} M.",
        f"- adv_path: {FLOP_MODEL['adv_path']} = "
        f"{macs['implied']['adv_path_per_image'] / 1e9:.2f} GMAC per image",
        f"- RSLAD: {FLOP_MODEL['rslad']} = {macs['implied']['rslad_per_image'] / 1e9:.2f} GMAC per image",
        f"- ({FLOP_MODEL['assumptions']})",
        "",
        f"Implied MAC ratio adv_path/RSLAD: **{macs['implied']['ratio']:.2f}**; measured time ratio: "
        f"**{meas['median']:.2f}** [{meas['min']:.2f}, {meas['max']:.2f}].",
    ]
    mem = sec.get("memory_estimate")
    if mem:
        lines += [
            "",
            f"## 5. Peak memory of the adv_path step, {mem['student']} student + {mem['teacher']} teacher, "
            f"batch {mem['target']['batch']}, m = {mem['target']['steps']}",
            "",
            f"**{mem['kind']}.** {mem['method']}",
            "",
            "| B | m | (2m+1)B | measured growth MiB | fitted MiB | s (2 steps) |",
            "|---|---|---|---|---|---|",
        ]
        for p in mem["points"]:
            lines.append(
                f"| {p['batch']} | {p['steps']} | {p['inputs']} | {p['growth_bytes'] / 2**20:.0f} | "
                f"{p['fitted_growth_bytes'] / 2**20:.0f} | {p['seconds_two_steps']:.0f} |"
            )
        fit = mem["fit"]
        st = mem["static_bytes"]
        lines += [
            "",
            f"Fit: growth = {fit['a_bytes'] / 2**20:.0f} MiB + "
            f"{fit['c_bytes_per_input'] / 2**20:.2f} MiB x (2m+1)B "
            f"(R^2 {fit['r2']:.4f}). Static: student {st['student_weights'] / 2**20:.0f} MiB + momentum "
            f"{st['sgd_momentum'] / 2**20:.0f} MiB + teacher {st['teacher_weights'] / 2**20:.0f} MiB.",
            f"Estimate at (2m+1)B = {mem['target']['inputs_2m_plus_1_times_B']}: "
            f"**{mem['estimate_fp32_gib']:.1f} GiB "
            f"in fp32**, about **{mem['estimate_bf16_gib']:.1f} GiB under bf16 autocast** (activations about "
            f"half of fp32).",
        ]
    return "\n".join(lines) + "\n"


# ---- main --------------------------------------------------------------------------------------------------


def parse_points(text: str) -> list[tuple[int, int]]:
    """``"2x2,4x2"`` -> [(2, 2), (4, 2)] (batch x m)."""
    out = []
    for item in text.split(","):
        b, _, m = item.strip().partition("x")
        out.append((int(b), int(m)))
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = report_parser(__doc__, "benchmarks/results/distill_step-cpu.json")
    p.add_argument("--student", default="resnet18")
    p.add_argument("--student-width", type=float, default=0.25)
    p.add_argument("--teacher", default="resnet18")
    p.add_argument("--teacher-width", type=float, default=0.5)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", "-m", type=int, default=10, help="attack steps m of every method")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--methods",
        default="all",
        help="comma-separated method names (adv_path and rslad are always included)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (set OMP_NUM_THREADS too)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-memory", action="store_true", help="leave out the memory estimate (section 5)")
    p.add_argument("--memory-student", default="resnet18")
    p.add_argument("--memory-teacher", default="wide_resnet", help="wide_resnet is WRN-34-10 by default")
    p.add_argument("--memory-batch", type=int, default=128, help="batch of the extrapolated estimate")
    p.add_argument("--memory-m", type=int, default=10, help="m of the extrapolated estimate")
    p.add_argument(
        "--memory-points",
        type=parse_points,
        default=parse_points("2x2,4x2,8x2,4x1,4x4"),
        help="measured (batch x m) points",
    )
    p.add_argument(
        "--memory-point", type=parse_points, default=None, help=argparse.SUPPRESS
    )  # subprocess mode
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    pin_threads(args.threads)
    if args.memory_point:
        ((b, m),) = args.memory_point
        print(json.dumps(memory_point(args, b, m)))
        return

    t0 = time.perf_counter()
    log = stderr_log(t0)
    device = torch.device(args.device)
    student_choice = ModelChoice(args.student, args.student_width)
    teacher_choice = ModelChoice(args.teacher, args.teacher_width)
    bench = make_bench(
        student_choice,
        teacher_choice,
        batch=args.batch,
        steps=args.steps,
        num_classes=args.num_classes,
        device=device,
        channels_last=args.channels_last,
        seed=args.seed,
    )
    names = (
        METHODS.names() if args.methods == "all" else sorted({*args.methods.split(","), "adv_path", "rslad"})
    )
    reference_loss = load_reference_loss()

    log("equality check (eval mode)")
    equality = equality_check(bench, reference_loss)
    log(f"loss fast {equality['loss_fast']:.8f} reference {equality['loss_reference']:.8f}")

    variants: dict[str, Step] = {}
    methods: dict[str, tuple[DistillMethod, torch.optim.Optimizer]] = {
        n: build_method(bench, n) for n in names
    }
    fast, fast_opt = methods["adv_path"]
    assert isinstance(fast, AdvPath)
    ref_method, ref_opt = build_method(bench, "adv_path")
    assert isinstance(ref_method, AdvPath)
    reference = ReferenceAdvPath(ref_method, bench.num_classes, reference_loss)
    for gen_owner in (fast, ref_method):
        gen_owner.generator = torch.Generator(device=device).manual_seed(args.seed + 11)

    def method_step(n: str) -> Step:
        method, opt = methods[n]
        return lambda: train_step(bench, method, opt)

    # adv_path, its reference and its parts side by side; the other methods after them
    variants["adv_path"] = method_step("adv_path")
    variants[REFERENCE] = lambda: train_step(
        bench, ref_method, ref_opt, lambda: reference.loss(bench.x, bench.y)
    )
    chunked, chunked_opt = build_method(bench, "adv_path")
    assert isinstance(chunked, AdvPath)
    chunked.max_batch = args.batch
    variants[CHUNKED] = lambda: train_step(bench, chunked, chunked_opt)
    parts_method, parts_opt = build_method(bench, "adv_path")
    assert isinstance(parts_method, AdvPath)
    parts = part_steps(bench, parts_method, parts_opt, part_inputs(bench, parts_method))
    variants.update({f"part_{k}": v for k, v in parts.items()})
    variants.update({n: method_step(n) for n in names if n != "adv_path"})

    log(f"timing {len(variants)} variants: {', '.join(variants)}")
    timings = run_rounds(bench, variants, args.repeats, args.warmup, log)
    times, cpu, faults = timings.wall, timings.cpu, timings.minor_faults
    n = args.repeats

    def costs(name: str) -> dict[str, Any]:
        return {
            "seconds": summary(times[name]),
            "cpu_seconds": summary(cpu[name]),
            "system_seconds": summary(timings.system[name]),
            "minor_page_faults": statistics.median(faults[name]),
        }

    sec_methods = {
        name: {
            **costs(name),
            "images_per_second": summary([args.batch / t for t in times[name]]),
            "relative_to_adv_path": per_round(relative_to(times, name, "adv_path"), n),
        }
        for name in names
    }
    sec_reference = {
        "equality_eval_mode": equality,
        "fast": costs("adv_path"),
        "reference": costs(REFERENCE),
        "fast_chunked": {**costs(CHUNKED), "what": f"adv_path with max_batch = B = {args.batch}"},
        "speedup": per_round(lambda i: times[REFERENCE][i] / times["adv_path"][i], n),
        "speedup_cpu_time": per_round(lambda i: cpu[REFERENCE][i] / cpu["adv_path"][i], n),
        "speedup_chunked": per_round(lambda i: times[REFERENCE][i] / times[CHUNKED][i], n),
        "speedup_chunked_cpu_time": per_round(lambda i: cpu[REFERENCE][i] / cpu[CHUNKED][i], n),
        "target_speedup": 1.5,
        "student_mode": "train",
    }
    part_times = {k: times[f"part_{k}"] for k in PART_NAMES}
    part_medians = {k: statistics.median(v) for k, v in part_times.items()}
    m, b = args.steps, args.batch
    what = {
        "craft": f"(a) attack: craft, {m} PGD steps on 2B = {2 * b}",
        "teacher": f"(b) teacher no-grad forward over (2m+1)B = {(2 * m + 1) * b}",
        "student": f"(c) student forward + backward over (2m+1)B = {(2 * m + 1) * b}",
        "sgd": "(d) SGD step",
    }
    sec_parts = {
        "parts": {
            k: {
                "what": what[k],
                **costs(f"part_{k}"),
                "raw": part_times[k],
                "share": part_medians[k] / sum(part_medians.values()),
            }
            for k in PART_NAMES
        },
        "sum_seconds_median": sum(part_medians.values()),
        "step_seconds": summary(times["adv_path"]),
        "step_over_sum": per_round(
            lambda i: times["adv_path"][i] / sum(part_times[k][i] for k in PART_NAMES), n
        ),
        "target": 1.2,
    }
    f_s = macs_per_image(bench.student, device)
    f_t = macs_per_image(bench.teacher, device)
    sec_rslad = {
        "measured_time_ratio": per_round(lambda i: times["adv_path"][i] / times["rslad"][i], n),
        "macs": {
            "student_macs_per_image": f_s,
            "teacher_macs_per_image": f_t,
            "formula": FLOP_MODEL,
            "implied": implied_macs(f_s, f_t, m),
        },
    }
    sections: dict[str, Any] = {
        "methods": sec_methods,
        "adv_path_vs_reference": sec_reference,
        "adv_path_parts": sec_parts,
        "adv_path_vs_rslad": sec_rslad,
    }
    if not args.skip_memory:
        log("memory estimate")
        sections["memory_estimate"] = memory_estimate(args, log)

    report = {
        **report_header("distill_step"),
        "config": {
            "student": student_choice.label(),
            "teacher": teacher_choice.label(),
            "batch": args.batch,
            "steps": args.steps,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "device": args.device,
            "channels_last": args.channels_last,
            "num_classes": args.num_classes,
            "seed": args.seed,
            "optimizer": f"SGD lr 0.1 momentum 0.9 weight decay {WEIGHT_DECAY}",
            "iad_epoch": "after warm-up",
            "order": "every variant once per round, order reversed every other round",
        },
        "raw": timings.as_dict(),
        "sections": sections,
        "total_seconds": time.perf_counter() - t0,
    }
    md = markdown(report)
    write_report(args.out, report, md)
    log(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    print(md)


if __name__ == "__main__":
    main()
