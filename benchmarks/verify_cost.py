"""What `rkd verify` costs on an INT8 engine against the same attacks on the float model, for two versions of
rkd side by side in one run.

Each run is one `rkd verify ENGINE --attacks pgd20,autoattack --no-gates` in its own process; its report's
timing gives the float reference's attacks (`float_s`) and the engine's attacks through the surrogate
(`engine_s`, every attack step: the surrogate's gradient pass and one engine forward). The cost ratio is
engine_s / float_s of the same run, on the same samples. With ``--baseline-src DIR`` (the ``toolchain`` folder of
another rkd checkout, e.g. a git worktree of an earlier commit) every round runs the baseline and the current
code, in an order reversed every other round, so both see the same machine state; ratios are given per run
and as median [min, max] per version::

    git worktree add /tmp/rkd-before <commit>
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/verify_cost.py --engine BUNDLE/model.int8.onnx \\
        --data-root CIFAR10_DIR --n 100 --rounds 2 --baseline-src /tmp/rkd-before/toolchain \\
        --out benchmarks/results/verify_cost-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common

HERE = Path(__file__).resolve().parent
CURRENT_SRC = HERE.parent / "toolchain"


def _commit(src: Path) -> str:
    out = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "."], capture_output=True,
                           text=True).stdout.strip()
    return (out.stdout.strip() or "unknown") + ("+changes" if dirty else "")


def run_once(src: Path, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """One `rkd verify` with ``src`` first on the path; the timing and result of its report."""
    cmd = [sys.executable, "-m", "rkd", "verify", "--engine", args.engine, "--n", str(args.n), "--attacks",
           args.attacks, "--seed", str(args.seed), "--report", str(folder), "--no-gates"]
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    env = {**os.environ, "PYTHONPATH": str(src)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if not (folder / "verify.json").exists():
        raise SystemExit(f"rkd verify ({src}) wrote no report (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    report = json.loads((folder / "verify.json").read_text())
    timing = report["timing"]
    return {"wall_s": wall, "float_s": timing["float_s"], "engine_s": timing["engine_s"],
            "ratio": timing["engine_s"] / timing["float_s"], "engine_calls": timing.get("engine_calls"),
            "engine_images": timing.get("engine_images"), "robust_acc": report["robust_acc"],
            "float_robust_acc": report["float"]["robust_acc"], "clean_acc": report["clean_acc"],
            "agreement": report.get("agreement")}


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def markdown(report: dict[str, Any]) -> str:
    """The runs and the per-version summary as Markdown."""
    lines = [
        "# What `rkd verify` costs: engine attacks against the same attacks on the float model",
        "",
        f"{report['date']}; {report['machine']['cpu_model']}, {report['threads']} thread(s); engine "
        f"`{report['engine']}`; {report['attacks']} on the first {report['n']} test images, seed {report['seed']}.",
        "",
        f"Command: `{report['command']}`",
        "",
        "| round | version | float attacks s | engine attacks s | engine / float | robust (engine) | "
        "robust (float) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        lines.append(f"| {r['round']} | {r['version']} ({r['commit']}) | {r['float_s']:.1f} | {r['engine_s']:.1f} | "
                     f"{r['ratio']:.2f} | {r['robust_acc']:.1%} | {r['float_robust_acc']:.1%} |")
    lines += ["", "| version | engine / float, median [min, max] | engine attacks s, median |", "|---|---|---|"]
    for version, s in report["summary"].items():
        lines.append(f"| {version} | {s['ratio']['median']:.2f} [{s['ratio']['min']:.2f}, {s['ratio']['max']:.2f}] | "
                     f"{s['engine_s']['median']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the rounds and write OUT (JSON) and OUT with .md."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", required=True, help="the INT8 .onnx to verify")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--attacks", default="pgd20,autoattack")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--baseline-src", type=Path, default=None, help="toolchain folder of the rkd to compare with")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    versions = {"current": CURRENT_SRC}
    if args.baseline_src is not None:
        versions = {"baseline": args.baseline_src.resolve(), **versions}
    commits = {name: _commit(src) for name, src in versions.items()}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            order = list(versions) if k % 2 == 0 else list(reversed(versions))
            for name in order:
                run = run_once(versions[name], args, Path(tmp) / f"{name}-{k}")
                runs.append({"round": k + 1, "version": name, "commit": commits[name], **run})
                print(f"round {k + 1} {name}: float {run['float_s']:.1f} s, engine {run['engine_s']:.1f} s, "
                      f"ratio {run['ratio']:.2f}", flush=True)
    summary = {name: {key: _spread([r[key] for r in runs if r["version"] == name])
                      for key in ("ratio", "engine_s", "float_s")} for name in versions}
    report = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": _common.machine_info(),
              "threads": os.environ.get("OMP_NUM_THREADS", "unset"), "command": _common.command_line(),
              "engine": args.engine, "n": args.n, "attacks": args.attacks, "seed": args.seed, "runs": runs,
              "summary": summary}
    _common.write_report(args.out, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
