"""What `rkd verify` costs: PGD-20 + standard AutoAttack on n test images against an INT8 ONNX Runtime model.

Runs (or reads) one `rkd verify` report and writes a summary: wall time per stage (the float reference's own
attacks, the engine's attacks through the surrogate, transfer, checks), per attack and per AutoAttack
sub-attack, how many points each attack ran on (AutoAttack only on the points still robust after PGD-20, each
sub-attack only on the points still robust after the previous one), the engine calls and images, and the
result. Run it on an otherwise idle machine, threads pinned::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/verify_speed.py \\
        --engine runs/quickstart/bundle/model.int8.onnx --data-root ../shared/data/cifar10 --n 1000 \\
        --out benchmarks/results/verify-int8-cpu

or summarise a report an `rkd verify` run already wrote: ``--report DIR/verify.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def _rows(report: dict[str, Any], side: str) -> list[str]:
    attacks = report["attacks"] if side == "engine" else report["float"]["attacks"]
    rows = []
    for name, entry in attacks.items():
        details = entry.get("details") or {}
        attacked = details.get("attacked", "")
        rows.append(f"| {side} | {name} | {attacked} | {entry['correct']}/{entry['n']} | {entry['seconds']:.1f} |")
        for sub, secs in (details.get("seconds") or {}).items():
            rows.append(f"| {side} | &nbsp;&nbsp;{name}/{sub} | | | {secs:.1f} |")
    return rows


def summarise(report: dict[str, Any], command: str) -> str:
    """A Markdown summary of one verify report's timings."""
    t = report["timing"]
    lines = [
        f"# rkd verify: cost of PGD-20 + AutoAttack on n={report['n']}",
        "",
        f"Artifact `{report['artifact']['file']}` ({report['artifact']['kind']}, sha256 "
        f"`{report['artifact']['sha256'][:12]}`); {report['data']['dataset']} {report['data']['split']}, first "
        f"{report['n']} images, {report['norm']} eps={report['eps_text']}, seed {report['seed']}; device "
        f"{report['device'].get('cpu')} with {report['device'].get('torch_threads')} torch threads; command: "
        f"`{command}`. One run (no repeats): the spread is not measured.",
        "",
        f"Total {t['total_s']:.0f} s: float reference {t.get('float_s', 0):.0f} s, "
        f"engine {t['engine_s']:.0f} s, checks "
        f"{t['checks_s']:.1f} s; engine calls {t['engine_calls']}, images through the engine {t['engine_images']}.",
        "",
        "| side | attack | points attacked | robust after | seconds |",
        "|---|---|---|---|---|",
        *_rows(report, "float"),
        *_rows(report, "engine"),
        "",
        f"Result: engine clean {report['clean_acc']:.1%}, worst case {report['robust_acc']:.1%} "
        f"[{report['worst_case']['ci95'][0]:.1%}-{report['worst_case']['ci95'][1]:.1%}]; float worst case "
        f"{report['float']['robust_acc']:.1%}; verdict {report['verdict']}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run `rkd verify` (or read its report) and write OUT.json / OUT.md."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", help="the INT8 .onnx to verify")
    ap.add_argument("--report", help="summarise this verify.json instead of running")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--out", required=True, help="output prefix, e.g. benchmarks/results/verify-int8-cpu")
    args = ap.parse_args()
    if args.report:
        path, command = Path(args.report), f"rkd verify (report {args.report})"
    else:
        if not args.engine:
            ap.error("give --engine or --report")
        folder = Path(args.out + ".report")
        cmd = [sys.executable, "-m", "rkd", "verify", "--engine", args.engine, "--n", str(args.n),
               "--attacks", "pgd20,autoattack", "--report", str(folder), "--state", str(folder) + ".state",
               "--no-gates"]
        if args.data_root:
            cmd += ["--data-root", args.data_root]
        subprocess.run(cmd, check=False, env=os.environ.copy())
        path, command = folder / "verify.json", " ".join(cmd[1:])
    report = json.loads(path.read_text())
    report.pop("per_sample", None)
    Path(args.out + ".json").write_text(json.dumps(report, indent=1) + "\n")
    Path(args.out + ".md").write_text(summarise(report, command))
    print(Path(args.out + ".md").read_text())


if __name__ == "__main__":
    main()
