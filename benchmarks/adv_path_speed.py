"""Speed of rkd's adv_path training step: fp32, with the compiled attack, in bf16, against its plain re-creation.

adv_path has no published code to time against, so its baseline is ``_step.ReferenceAdvPath``: the method written
the straightforward way (one PGD loop per branch on B samples, a teacher and a student call per iterate and
branch), fp32, NCHW, as research code runs it. Variants, each one full training step as ``rkd.train.loop`` runs
it (forward with the attack, backward, SGD step; student in train mode), on the same batch and models:

- ``reference``: the re-creation of the ``reconstruction`` form (the form it covers), NCHW fp32;
- ``rkd_reconstruction``: rkd's adv_path, ``reconstruction`` preset, channels_last fp32 (same objective);
- ``rkd``: rkd's adv_path with its default preset (``kl_linear_sum``), channels_last fp32;
- ``rkd_compiled``: the same with ``train.compile_attack`` on (compiled before the timing);
- ``rkd_bf16``: the same under ``train.amp: bf16`` (bf16 autocast; native where the CPU has AVX512-BF16/AMX).

Every variant's FLOPs are counted once (``_step.count_flops``: aten operators, grouped weight gradients per
group), so each time has its GFLOP/s beside it. One warm-up round, then ``--rounds`` rounds, every variant once a
round in an order reversed every other round; ratios per round, then median [min-max].

Run::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/adv_path_speed.py --threads 2 \\
        --out benchmarks/results/adv_path_speed-cpu.json
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from _common import pin_threads, report_header, report_parser, stderr_log, write_report
from _step import (
    Bench,
    ModelChoice,
    ReferenceAdvPath,
    Step,
    build_method,
    count_flops,
    load_reference_loss,
    make_bench,
    npz_batch,
    per_round,
    summary,
    timed,
    train_step,
)

from rkd.attacks import compile_attack_model

WHAT = {
    "reference": "adv_path re-created plainly (PGD loop per branch, per-iterate calls), reconstruction form, NCHW fp32",
    "rkd_reconstruction": "rkd adv_path, reconstruction preset, channels_last fp32",
    "rkd": "rkd adv_path, default preset (kl_linear_sum), channels_last fp32",
    "rkd_compiled": "rkd adv_path default + train.compile_attack",
    "rkd_bf16": "rkd adv_path default + train.amp: bf16",
}


def real_batch(bench: Bench, path: Path) -> None:
    """Replace the bench's noise batch by the first rows of an .npz (x uint8 NHWC, y), in the bench's layout."""
    x, y = npz_batch(path, len(bench.y))
    fmt = torch.channels_last if bench.channels_last else torch.contiguous_format
    bench.x, bench.y = x.to(bench.device).contiguous(memory_format=fmt), y.to(bench.device)


def build_variants(args: Any) -> tuple[dict[str, Step], Bench]:
    student, teacher = ModelChoice(args.student, args.student_width), ModelChoice(args.teacher, args.teacher_width)
    device = torch.device(args.device)
    benches = {}
    for cl in (True, False):
        benches[cl] = make_bench(student, teacher, batch=args.batch, steps=args.steps, num_classes=10,
                                 device=device, channels_last=cl, seed=args.seed)
        if args.data_npz is not None:
            real_batch(benches[cl], args.data_npz)
    cl, nchw = benches[True], benches[False]
    bf16 = Bench(**{**cl.__dict__, "amp": "bf16"})
    steps: dict[str, Step] = {}
    ref_method, ref_opt = build_method(nchw, "adv_path", preset="reconstruction")
    reference = ReferenceAdvPath(ref_method, 10, load_reference_loss())
    steps["reference"] = lambda: train_step(nchw, ref_method, ref_opt, lambda: reference.loss(nchw.x, nchw.y))
    for name, bench, preset, compiled in (("rkd_reconstruction", cl, "reconstruction", False),
                                          ("rkd", cl, "kl_linear_sum", False),
                                          ("rkd_compiled", cl, "kl_linear_sum", True),
                                          ("rkd_bf16", bf16, "kl_linear_sum", False)):
        method, opt = build_method(bench, "adv_path", preset=preset)
        if compiled:
            method.attack_model = compile_attack_model(method.student)
        steps[name] = (lambda b, m, o: lambda: train_step(b, m, o))(bench, method, opt)
    return steps, cl


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        "# adv_path step speed",
        "",
        f"{report['date']}; {report['machine']['cpu_model']}, {report['threads']} thread(s); torch {report['torch']}."
        f" Student {cfg['student']}, teacher {cfg['teacher']}, batch {cfg['batch']}, m = {cfg['steps']}, data "
        f"{cfg['data']}; {cfg['rounds']} rounds after a warm-up, interleaved; median [min-max].",
        "",
        f"Command: `{report['command']}`",
        "",
        "| variant | s/step | GFLOP/step | GFLOP/s | speed-up over reference | over rkd fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in report["variants"].items():
        s, g = r["seconds"], r["gflop_per_second"]
        over_ref, over_rkd = r["speedup_over_reference"], r["speedup_over_rkd"]
        lines.append(
            f"| {name}: {r['what']} | {s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}] | {r['gflop_per_step']:.0f} |"
            f" {g['median']:.1f} | {over_ref['median']:.2f}x [{over_ref['min']:.2f}-{over_ref['max']:.2f}] | "
            f"{over_rkd['median']:.2f}x [{over_rkd['min']:.2f}-{over_rkd['max']:.2f}] |")
    lines += ["", f"First call of the compiled variant (compiling): {report['compile_seconds']:.0f} s. "
              f"Total {report['total_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = report_parser(__doc__ or "", "benchmarks/results/adv_path_speed-cpu.json")
    p.add_argument("--student", default="mobilenet_v2")
    p.add_argument("--student-width", type=float, default=1.0)
    p.add_argument("--teacher", default="resnet18")
    p.add_argument("--teacher-width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", "-m", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-npz", type=Path, default=None, help="real images: .npz with x (N,H,W,3) uint8, y (N,)")
    args = p.parse_args(argv)
    pin_threads(args.threads)
    t0 = time.perf_counter()
    log = stderr_log(t0)
    steps, bench = build_variants(args)
    log("counting FLOPs (one step each) and compiling")
    flops, compile_s = {}, 0.0
    for name, step in steps.items():
        t = time.perf_counter()
        flops[name] = count_flops(step) if name != "rkd_compiled" else None
        if name == "rkd_compiled":
            step()  # the first call compiles; dynamo's counter does not see inside compiled graphs
            compile_s = time.perf_counter() - t
            flops[name] = flops["rkd"]  # the same operators, compiled
        log(f"  {name}: {time.perf_counter() - t:.1f} s, {flops[name] / 1e9:.0f} GFLOP")
    times: dict[str, list[float]] = {k: [] for k in steps}
    names = list(steps)
    for r in range(1 + args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            wall = timed(bench, steps[name])[0]
            if r:
                times[name].append(wall)
        log(("warm-up" if r == 0 else f"round {r}/{args.rounds}") + ": " +
            ", ".join(f"{n} {times[n][-1]:.1f}s" for n in names if r and times[n]))
    n = args.rounds
    variants = {
        name: {
            "what": WHAT[name],
            "seconds": summary(times[name]),
            "raw": times[name],
            "gflop_per_step": flops[name] / 1e9,
            "gflop_per_second": summary([flops[name] / 1e9 / t for t in times[name]]),
            "speedup_over_reference": per_round(lambda i, k=name: times["reference"][i] / times[k][i], n),
            "speedup_over_rkd": per_round(lambda i, k=name: times["rkd"][i] / times[k][i], n),
        }
        for name in names
    }
    report = {
        **report_header("adv_path_speed"),
        "config": {"student": ModelChoice(args.student, args.student_width).label(),
                   "teacher": ModelChoice(args.teacher, args.teacher_width).label(), "batch": args.batch,
                   "steps": args.steps, "rounds": args.rounds, "device": args.device, "seed": args.seed,
                   "data": str(args.data_npz) if args.data_npz else "uniform noise"},
        "variants": variants,
        "compile_seconds": compile_s,
        "total_seconds": time.perf_counter() - t0,
    }
    md = markdown(report)
    write_report(args.out, report, md)
    print(md)


if __name__ == "__main__":
    main()
