"""What ``train.compile_attack: auto`` chooses on real models, and whether the choice was the faster one.

For each student and method, on one batch (``--data-npz`` rows or uniform noise) with the teacher, batch and m given:

1. ``trial``: training steps as ``rkd.train.loop`` runs them (``_step.train_step``), each timed and passed to
   :class:`rkd.train.compile_choice.CompileTrial` exactly as the loop does (with ``--run-steps`` as the run's
   remaining steps, so the trial is not skipped as too short) until it decides: the trial's eager, compile and
   compiled step times and its choice.
2. ``check``: afterwards, fresh copies of the method, one eager and one with its attack model compiled anew,
   timed in ``--check-rounds`` interleaved rounds (order reversed every other round): the compiled step's time
   over the eager one's per round. The choice was right when it kept the
   compiled model and the check's median ratio is below ``KEEP_BELOW``, or dropped it and the median is not
   (not judged when the trial did not compile: a run too short to repay it).

Run::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/compile_choice.py --threads 2 \\
        --out benchmarks/results/compile_choice-cpu.json

It writes the JSON (machine, torch, threads, date, command, raw times) and a Markdown summary beside it.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from _common import pin_threads, report_header, report_parser, stderr_log, write_report
from _step import ModelChoice, build_method, make_bench, npz_batch, per_round, summary, timed, train_step

from rkd.attacks import compile_attack_model
from rkd.train.compile_choice import KEEP_BELOW, CompileTrial


def parse_students(text: str) -> list[ModelChoice]:
    out = []
    for item in text.split(","):
        name, _, width = item.partition(":")
        out.append(ModelChoice(name, float(width or 1.0)))
    return out


def run_trial(bench: Any, name: str, knobs: dict[str, Any], run_steps: int, log: Any) -> dict[str, Any]:
    method, opt = build_method(bench, name, **knobs)

    def install(model: torch.nn.Module) -> None:
        method.attack_model = model

    trial = CompileTrial(eager=method.student, install=install, remaining_steps=run_steps,
                         compile_fn=compile_attack_model)
    steps: list[float] = []
    decision = None
    while decision is None:
        wall = timed(bench, lambda: train_step(bench, method, opt))[0]
        steps.append(wall)
        log(f"  trial step {len(steps)} ({trial.phase}): {wall:.2f} s")
        decision = trial.after_step(wall)
    return {"decision": decision, "step_seconds": steps, "steps": len(steps)}


def run_check(bench: Any, name: str, knobs: dict[str, Any], rounds: int, log: Any) -> dict[str, Any]:
    eager, eager_opt = build_method(bench, name, **knobs)
    comp, comp_opt = build_method(bench, name, **knobs)
    t0 = time.perf_counter()
    comp.attack_model = compile_attack_model(comp.student)
    train_step(bench, comp, comp_opt)  # compiles (warm cache when the trial compiled the same graph)
    first = time.perf_counter() - t0
    train_step(bench, eager, eager_opt)
    variants = {"eager": lambda: train_step(bench, eager, eager_opt),
                "compiled": lambda: train_step(bench, comp, comp_opt)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for k in order:
            times[k].append(timed(bench, variants[k])[0])
        log(f"  check round {r + 1}: eager {times['eager'][-1]:.2f} s, compiled {times['compiled'][-1]:.2f} s")
    return {"first_compiled_step_seconds": first, "seconds": {k: summary(v) for k, v in times.items()},
            "raw": times, "compiled_over_eager": per_round(lambda i: times["compiled"][i] / times["eager"][i],
                                                           rounds)}


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        "# `train.compile_attack: auto` on real models",
        "",
        f"{report['date']}, torch {report['torch']}, {report['threads']} thread(s), {cfg['device']}; teacher "
        f"{cfg['teacher']}, batch {cfg['batch']}, m {cfg['steps']}, data {cfg['data']}; check: "
        f"{cfg['check_rounds']} interleaved rounds. Kept only below {KEEP_BELOW}x.",
        "",
        f"Command: `{report['command']}`",
        "",
        "| student | method | trial: eager s/step | compile step s | compiled s/step | choice | check: compiled/eager "
        "median [min-max] | choice right |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        d, c = r["trial"]["decision"], r["check"]["compiled_over_eager"]
        lines.append(
            f"| {r['student']} | {r['method']} | {d['eager_step_s']} | {d['compile_step_s']} | {d['compiled_step_s']}"
            f" | {d['choice']} | {c['median']:.2f}x [{c['min']:.2f}-{c['max']:.2f}] | {r['right']} |")
    lines += ["", f"Total {report['total_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = report_parser(__doc__ or "", "benchmarks/results/compile_choice-cpu.json")
    p.add_argument("--students", default="mobilenet_v2:1.0", help="comma-separated name:width")
    p.add_argument("--teacher", default="resnet18")
    p.add_argument("--teacher-width", type=float, default=1.0)
    p.add_argument("--methods", default="rslad,ard,adv_path")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", "-m", type=int, default=10)
    p.add_argument("--run-steps", type=int, default=78_200, help="the run's remaining steps the trial is told")
    p.add_argument("--check-rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-npz", type=Path, default=None)
    args = p.parse_args(argv)
    pin_threads(args.threads)
    t0 = time.perf_counter()
    log = stderr_log(t0)
    device = torch.device(args.device)
    results = []
    for student in parse_students(args.students):
        bench = make_bench(student, ModelChoice(args.teacher, args.teacher_width), batch=args.batch,
                           steps=args.steps, num_classes=10, device=device, channels_last=True, seed=args.seed)
        if args.data_npz is not None:
            x, y = npz_batch(args.data_npz, args.batch)
            bench.x = x.to(device).contiguous(memory_format=torch.channels_last)
            bench.y = y.to(device)
        for name in args.methods.split(","):
            knobs = {"preset": "kl_linear_sum"} if name == "adv_path" else {}
            log(f"{student.label()} {name}: trial")
            torch._dynamo.reset()  # each trial compiles from an empty in-process cache
            trial = run_trial(bench, name, knobs, args.run_steps, log)
            log(f"{student.label()} {name}: {trial['decision']['choice']} ({trial['decision']['reason']}); check")
            check = run_check(bench, name, knobs, args.check_rounds, log)
            med = statistics.median(check["raw"]["compiled"]) / statistics.median(check["raw"]["eager"])
            measured = trial["decision"]["compiled_step_s"] is not None  # else: too short a run to try
            right = (trial["decision"]["choice"] == "compiled") == (med < KEEP_BELOW) if measured else None
            results.append({"student": student.label(), "method": name, "knobs": copy.deepcopy(knobs),
                            "trial": trial, "check": check, "right": right})
    report = {
        **report_header("compile_choice"),
        "config": {"teacher": ModelChoice(args.teacher, args.teacher_width).label(), "batch": args.batch,
                   "steps": args.steps, "run_steps": args.run_steps, "check_rounds": args.check_rounds,
                   "device": args.device, "seed": args.seed,
                   "data": str(args.data_npz) if args.data_npz else "uniform noise"},
        "results": results,
        "total_seconds": time.perf_counter() - t0,
    }
    md = markdown(report)
    write_report(args.out, report, md)
    print(md)


if __name__ == "__main__":
    main()
