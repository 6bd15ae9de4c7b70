"""Method comparison of robust distillation on CIFAR-10 at CPU scale, in resumable parts.

Every part calls the real ``rkd`` CLI in a subprocess: ``rkd distill`` (base.yaml plus ``--set`` overrides) and
``rkd eval`` for a (student, method, seed) row or an adv_path ablation; ``rkd quantize`` (PTQ, or robust QAT)
and ``rkd verify`` for a deployment row; ``rkd teacher`` when the teacher checkpoint is missing. A part writes
``benchmarks/results/method_comparison/<part>.json`` only once it is complete (atomically), so a killed run
resumes by skipping finished parts; a half-done part resumes its training (``--resume``), its AutoAttack run
(``--aa-state``) or its verification (``--state``), and skips the commands it already finished. What runs is
set in comparison.yaml (students, methods, seeds, ablations, evaluation, deployment) and base.yaml (the
training recipe); README.md gives the sizing and the measured costs.

Run from the repository root, one thread per process (two processes on a 2-core machine)::

    source .venv/bin/activate
    export OMP_NUM_THREADS=1
    python benchmarks/method_comparison/run.py plan                 # every part, its cost, which are done
    python benchmarks/method_comparison/run.py run --jobs 2         # everything not done, two parts at a time
    python benchmarks/method_comparison/run.py run --part r18-ard-s0 --max-minutes 60
    python benchmarks/method_comparison/run.py table                # results/method_comparison/table.{md,json}
    python benchmarks/method_comparison/run.py probe                # re-measure the costs behind the estimates

``--smoke`` (before the command) runs the same pipeline on synthetic data with tiny settings into separate
folders (``runs/method_comparison-smoke``, ``benchmarks/results/method_comparison-smoke``).

The code is a small package beside this file: ``settings`` (comparison.yaml, the recipe), ``plan`` (parts, their
commands, which are complete), ``estimates`` (costs, ``plan``), ``runner`` (subprocesses, jobs, signals),
``collect`` (result JSONs), ``probe`` and ``cells``/``tables`` (``table``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path


def _import_benchmarks() -> None:
    """Register ``benchmarks/`` (this folder's parent) as the package ``benchmarks``, so that this script, run as
    a file or loaded by path, imports its modules without changing ``sys.path``."""
    folder = Path(__file__).resolve().parents[1]
    known = sys.modules.get("benchmarks")
    if known is not None and [str(folder)] == list(getattr(known, "__path__", [])):
        return
    spec = importlib.util.spec_from_file_location("benchmarks", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmarks"] = module
    spec.loader.exec_module(module)


_import_benchmarks()

# The harness's names, importable from this file as before (tests load it by path).
from benchmarks.method_comparison.cells import (  # noqa: E402, F401
    fewer_seeds,
    is_default_adv_path,
    paired_cells,
    row_stats,
)
from benchmarks.method_comparison.collect import same_checkpoint_by_class  # noqa: E402, F401
from benchmarks.method_comparison.estimates import Estimator, makespan, show_plan  # noqa: E402, F401
from benchmarks.method_comparison.plan import Part, Step, build_plan, is_done, lacking, steps_of  # noqa: E402, F401
from benchmarks.method_comparison.probe import probe  # noqa: E402
from benchmarks.method_comparison.runner import run_all, say, stop_children  # noqa: E402
from benchmarks.method_comparison.settings import CONFIG, HERE, REPO, Settings  # noqa: E402, F401
from benchmarks.method_comparison.tables import table  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="synthetic data, tiny settings, separate folders")
    ap.add_argument("--config", type=Path, default=CONFIG, help="settings file [comparison.yaml]")
    ap.add_argument("--data-root", help="replace the settings' data_root")
    sub = ap.add_subparsers(dest="command", required=True)
    p_plan = sub.add_parser("plan", help="list every part, its estimated cost, and which are done")
    p_plan.add_argument("--jobs", type=int, default=2, help="also estimate the wall time for this many jobs")
    p_plan.add_argument("--ids", action="store_true", help="print only the ids of the parts not done (for --part)")
    p_plan.add_argument("--student", help="with --ids: only this student's parts (deployment included)")
    p_plan.add_argument("--group", choices=["teacher", "main", "ablation", "deploy"], help="with --ids: one group")
    p_run = sub.add_parser("run", help="run the parts that are not done, in plan order")
    p_run.add_argument("--part", nargs="+", metavar="ID", help="only these parts (ids from `plan`)")
    p_run.add_argument("--jobs", type=int, default=1, help="parts at a time (one per core: 2 on a 2-core machine)")
    p_run.add_argument("--max-minutes", type=float, help="start no part after this many minutes")
    sub.add_parser("table", help="aggregate the result JSONs into table.md and table.json")
    sub.add_parser("probe", help="measure step, evaluation and deployment costs (writes probe.json)")
    args = ap.parse_args(argv)
    cfg = Settings.load(args.config, smoke=args.smoke, data_root=args.data_root)
    os.chdir(REPO)
    if args.command == "plan" and args.ids:
        print(" ".join(p.id for p in build_plan(cfg) if not is_done(cfg, p)
                       and (args.student is None or p.student == args.student)
                       and (args.group is None or p.group == args.group)))
        return 0
    if args.command == "plan":
        return show_plan(cfg, args.jobs)
    if args.command == "run":
        signal.signal(signal.SIGTERM, stop_children)
        signal.signal(signal.SIGINT, stop_children)
        plan = build_plan(cfg)
        if args.part:
            known = {p.id for p in plan}
            unknown = [p for p in args.part if p not in known]
            if unknown:
                ap.error(f"unknown part(s): {', '.join(unknown)} (see `run.py plan`)")
            plan = [p for p in plan if p.id in set(args.part)]
        try:
            return run_all(cfg, plan, jobs=max(1, args.jobs), max_minutes=args.max_minutes)
        except KeyboardInterrupt:
            say("interrupted: finished parts are kept; `run` again resumes the others")
            return 130
    if args.command == "table":
        return table(cfg)
    return probe(cfg)


if __name__ == "__main__":
    sys.exit(main())
