"""Peak memory and time of adv_path's training step with and without ``low_memory``.

By default the student's graph over all 2m + 1 alignment passes is kept until ``backward``; with
``student.method.low_memory: true`` every chunk of the alignment pass (B inputs unless ``max_batch``) is
backpropagated as soon as its loss is known (the same gradient: ``tests/unit/test_adv_path.py``). This measures,
for each batch B and mode, in a fresh subprocess per point: the peak resident-memory growth of one training
step after a warm-up step (as ``distill_step.py``'s section 5: glibc mmap threshold fixed, ``malloc_trim``,
VmHWM reset through ``/proc/self/clear_refs``), and the wall time of ``--timed-steps`` steps. Rounds alternate
the order of the modes. Models are untrained, data uniform random (cost depends on neither).

Run (pin the threads)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/adv_path_memory.py \\
        --out benchmarks/results/adv_path_memory-cpu.json

It writes the JSON (machine, versions, command, every raw point) and a Markdown summary beside it (``.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common  # the helpers shared by the benchmarks (this folder is on sys.path)
import _step as ds  # the training-step bench: models, method, step and memory helpers
import torch

MODES = {"default": False, "low_memory": True}


def point(args: argparse.Namespace, batch: int, low_memory: bool) -> dict[str, Any]:
    """One (B, mode) point in this process: warm-up step, then peak RSS growth and wall time of the timed steps."""
    bench = ds.make_bench(ds.ModelChoice(args.student, args.student_width),
                          ds.ModelChoice(args.teacher, args.teacher_width), batch=batch, steps=args.steps,
                          num_classes=10, device=torch.device("cpu"), channels_last=True, seed=args.seed)
    method, optimizer = ds.build_method(bench, "adv_path", low_memory=low_memory)
    ds.train_step(bench, method, optimizer)
    ds.trim()
    before = ds.rss_bytes()
    Path("/proc/self/clear_refs").write_text("5")
    times = []
    for _ in range(args.timed_steps):
        t0 = time.perf_counter()
        ds.train_step(bench, method, optimizer)
        times.append(time.perf_counter() - t0)
    return {"batch": batch, "low_memory": low_memory, "before_bytes": before, "peak_bytes": ds.hwm_bytes(),
            "growth_bytes": ds.hwm_bytes() - before, "step_s": times}


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(ds.MALLOC_MMAP_THRESHOLD))
    points: list[dict[str, Any]] = []
    for r in range(args.rounds):
        order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
        for batch in args.batches:
            for mode in order:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--point", f"{batch}:{mode}",
                       *[a for k in ("student", "student_width", "teacher", "teacher_width", "steps",
                                     "timed_steps", "seed") for a in (f"--{k.replace('_', '-')}",
                                                                       str(getattr(args, k)))]]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
                p = json.loads(out.stdout.strip().splitlines()[-1]) | {"round": r, "mode": mode}
                points.append(p)
                print(f"round {r} B={batch} {mode}: growth {p['growth_bytes'] / 2**20:.0f} MiB, step "
                      f"{statistics.median(p['step_s']):.1f} s", file=sys.stderr, flush=True)
    summary = []
    for batch in args.batches:
        row: dict[str, Any] = {"batch": batch}
        for mode in MODES:
            ps = [p for p in points if p["batch"] == batch and p["mode"] == mode]
            row[mode] = {"growth_mib": [p["growth_bytes"] / 2**20 for p in ps],
                         "step_s_median": [statistics.median(p["step_s"]) for p in ps]}
        rounds = range(args.rounds)
        row["memory_ratio"] = [row["low_memory"]["growth_mib"][i] / row["default"]["growth_mib"][i] for i in rounds]
        row["time_ratio"] = [row["low_memory"]["step_s_median"][i] / row["default"]["step_s_median"][i]
                             for i in rounds]
        summary.append(row)
    return {"kind": "rkd-benchmark-adv-path-memory", "date": dt.datetime.now(dt.timezone.utc).isoformat(),
            "command": _common.command_line(), "machine": _common.machine_info(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "student": ds.ModelChoice(args.student, args.student_width).label(),
            "teacher": ds.ModelChoice(args.teacher, args.teacher_width).label(), "m": args.steps,
            "rounds": args.rounds, "timed_steps": args.timed_steps, "points": points, "summary": summary}


def markdown(rep: dict[str, Any]) -> str:
    def span(v: list[float], fmt: str) -> str:
        return f"{statistics.median(v):{fmt}} [{min(v):{fmt}}-{max(v):{fmt}}]"

    lines = [f"# adv_path step: memory with and without `low_memory` ({rep['date'][:10]})", "",
             f"Student {rep['student']}, teacher {rep['teacher']}, m = {rep['m']}, CPU "
             f"({rep['machine']['cpu_model']}, {rep['threads']} thread(s)), torch {rep['torch']}; "
             f"{rep['rounds']} rounds, each point a fresh process, {rep['timed_steps']} timed steps per point; "
             "median [min-max] over rounds. Memory: peak resident growth of a training step over the process "
             "before it (weights, optimizer state and data excluded).", "", f"Command: `{rep['command']}`", "",
             "| B | default: peak growth MiB | low_memory: peak growth MiB | memory ratio | default: s/step | "
             "low_memory: s/step | time ratio |", "|---|---|---|---|---|---|---|"]
    for row in rep["summary"]:
        d, lm = row["default"], row["low_memory"]
        lines.append(f"| {row['batch']} | {span(d['growth_mib'], '.0f')} | {span(lm['growth_mib'], '.0f')} | "
                     f"{span(row['memory_ratio'], '.3f')} | {span(d['step_s_median'], '.2f')} | "
                     f"{span(lm['step_s_median'], '.2f')} | {span(row['time_ratio'], '.3f')} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/adv_path_memory-cpu.json"))
    p.add_argument("--student", default="mobilenet_v2")
    p.add_argument("--student-width", type=float, default=0.5)
    p.add_argument("--teacher", default="resnet18")
    p.add_argument("--teacher-width", type=float, default=0.25)
    p.add_argument("--steps", "-m", type=int, default=5, help="m (the method comparison's base.yaml)")
    p.add_argument("--batches", type=lambda t: [int(b) for b in t.split(",")], default=[32, 64])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--timed-steps", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--point", default=None, help=argparse.SUPPRESS)  # subprocess mode: "B:mode"
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    if args.point:
        batch, mode = args.point.split(":")
        print(json.dumps(point(args, int(batch), MODES[mode])))
        return
    rep = run(args)
    _common.write_report(args.out, rep, markdown(rep), indent=1)
    print(markdown(rep))


if __name__ == "__main__":
    main()
