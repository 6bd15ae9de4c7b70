"""Screen adv_path variants on a few batches before training any: the "excess" of each loss and its gradient.

A robust distillation loss asks the student for invariance only through the part of its adversarial terms that
exceeds clean distillation. For a loss ``sum_j c_j KL(q_j || p_S(x_j)) + lambda_nat KL(p_T(x) || p_S(x))`` with
adversarial coefficients c_j on inputs x_j (iterates of sample i(j)), the excess is

    E = sum_j c_j [ KL(q_j || p_S(x_j)) - KL(p_T(x_i(j)) || p_S(x_i(j))) ]        (RSLAD's KL scale)

and its gradient norm |dE/dtheta| says how hard the loss pushes towards that invariance. In the 192-step method
comparison E tracked the ranking of the methods (issue-level summary in benchmarks/method_comparison/README.md),
so variants are screened by it first: seconds per variant, on the committed teacher and a student trained
briefly with RSLAD (``rkd distill``, cached under ``runs/adv_path_screen/``), on ``--batches`` training batches
of 128. Also reported per variant: the share of the whole loss on the final untargeted iterate, the share of the
adversarial weight on nearly clean iterates (student still right with >= its clean true-class probability
minus 0.05), the samples left without an adversarial term, and the step time (craft + loss + backward).
RSLAD and AdaAD are screened the same way (their one adversarial term).

Run (one thread, from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/adv_path_screen.py \\
        --out benchmarks/results/adv_path_screen-cpu.json

It writes the JSON (machine, versions, command, every batch's numbers) and a Markdown table beside it (``.md``).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common as ds  # the helpers shared by the benchmarks (this folder is on sys.path)
import torch
import torch.nn.functional as F

from rkd.config import ADV_PATH_PRESETS
from rkd.data import load_dataset
from rkd.distill.adaad import Adaad
from rkd.distill.adv_path import AdvPath
from rkd.distill.losses import RSLAD_KL_SCALE, kl_per_sample, soft_targets
from rkd.distill.rslad import Rslad
from rkd.models.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TEACHER = REPO / "benchmarks/results/method_comparison/teacher/model.safetensors"
RECON = ADV_PATH_PRESETS["reconstruction"]
U_LAST_CLEAN = {"gamma": 0.0, "iterate_stride": 10_000, "weights": "uniform", "align_target": "clean"}
U_SUM_PATH = {"gamma": 0.0, "aggregate": "sum", "weight_model": "path", "weights": "prob_change"}
# name -> adv_path knobs over the reconstruction preset (m from --steps); "rslad"/"adaad" are the baselines
VARIANTS: dict[str, dict[str, Any]] = {
    "reconstruction": {},
    "rslad_like (CE path)": U_LAST_CLEAN,
    "sum": {"aggregate": "sum"},
    "sum, path weights": {"aggregate": "sum", "weight_model": "path"},
    "mean, path weights": {"weight_model": "path"},
    "U, CE, sum, path w, clean": {**U_SUM_PATH, "align_target": "clean"},
    "U, KL, last iterate, clean (= RSLAD)": {**U_LAST_CLEAN, "step_loss": "kl"},
    "U, KL, uniform sum, clean": {"gamma": 0.0, "step_loss": "kl", "aggregate": "sum", "weights": "uniform",
                                  "align_target": "clean"},
    "U, KL, linear sum, clean": {"gamma": 0.0, "step_loss": "kl", "aggregate": "sum", "weights": "linear",
                                 "align_target": "clean"},
    "U, KL, sum, path w, clean": {**U_SUM_PATH, "step_loss": "kl", "align_target": "clean"},
    "U, KL, sum, path w, same point": {**U_SUM_PATH, "step_loss": "kl"},
    "U, KL, sum, teacher w, clean": {**U_SUM_PATH, "weight_model": "teacher", "step_loss": "kl",
                                     "align_target": "clean"},
    "U, KL, mean, path w, clean": {**U_SUM_PATH, "aggregate": "mean", "step_loss": "kl", "align_target": "clean"},
    "U, KL, sum, path w, clean, reliability": {**U_SUM_PATH, "step_loss": "kl", "align_target": "clean",
                                               "reliability": True},
    "U+T runner-up, KL, sum, path w, clean": {**U_SUM_PATH, "gamma": 1.0, "target": "runner_up", "step_loss": "kl",
                                              "align_target": "clean"},
    "U+T runner-up 0.5, KL, sum, path w, clean": {**U_SUM_PATH, "gamma": 0.5, "target": "runner_up",
                                                  "step_loss": "kl", "align_target": "clean"},
    "U+T least-likely, KL, sum, path w, clean": {**U_SUM_PATH, "gamma": 1.0, "target": "least_likely",
                                                 "step_loss": "kl", "align_target": "clean"},
    "rslad": {},
    "adaad": {},
}


def brief_student(args: argparse.Namespace) -> Path:
    """A ResNet-18 1/8 student trained for one short epoch with RSLAD from the committed teacher (cached)."""
    out = REPO / "runs/adv_path_screen/student"
    ckpt = out / "model.safetensors"
    if not ckpt.exists():
        cmd = [sys.executable, "-m", "rkd", "distill", "benchmarks/method_comparison/base.yaml", "--teacher",
               str(TEACHER), "--out", str(out), "--resume", "--data-root", args.data_root,
               "--set", "student.method.name=rslad", "--set", f"student.method.steps={args.steps}",
               "--set", f"data.train_subset={args.student_images}", "--set", "student.train.epochs=1",
               "--set", "student.train.milestones=null", "--set", "student.train.eval_n=0"]
        subprocess.run(cmd, check=True, cwd=REPO)
    return ckpt


def adversarial_terms(name: str, knobs: dict[str, Any], student: torch.nn.Module, teacher: torch.nn.Module,
                      x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> dict[str, Any]:
    """The loss's adversarial coefficients, targets and inputs, its natural weight, and the crafting time."""
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    teacher_clean = teacher(x).float()
    if name in ("rslad", "adaad"):
        method = (Rslad if name == "rslad" else Adaad)(student, teacher, steps=steps, generator=gen)
        x_adv = method.craft(x, y)
        target = soft_targets(teacher_clean) if name == "rslad" else soft_targets(teacher(x_adv).float())
        w = 5 / 6 if name == "rslad" else 1.0
        coef = torch.full((len(x),), w / len(x))
        return {"coef": coef, "target": target, "inputs": x_adv, "sample": torch.arange(len(x)), "lambda_nat": 1 - w,
                "k": torch.full((len(x),), steps), "branch": ["u"] * len(x), "final_u": torch.ones(len(x), dtype=bool),
                "stats": {}, "craft_s": time.perf_counter() - t0}
    settings = {**RECON, **knobs, "steps": steps}
    if settings["iterate_stride"] > steps:
        settings["iterate_stride"] = steps
    method = AdvPath(student, teacher, **settings, generator=gen)
    paths = method.craft(x, y, teacher_clean)
    iterates, target, coef, _, names, stats = method._alignment(x, y, paths, teacher_clean)
    k_n, b = paths.u.shape[:2]
    ks = torch.tensor(paths.steps).repeat_interleave(b).repeat(len(names))
    branch = [n for n in names for _ in range(k_n * b)]
    final_u = torch.zeros(len(iterates), dtype=torch.bool)
    final_u[(k_n - 1) * b : k_n * b] = True
    return {"coef": coef, "target": target, "inputs": iterates, "sample": torch.arange(b).repeat(len(names) * k_n),
            "lambda_nat": settings["lambda_nat"], "k": ks, "branch": branch, "final_u": final_u,
            "stats": {k: float(v) for k, v in stats.items()}, "craft_s": time.perf_counter() - t0}


def screen_one(name: str, knobs: dict[str, Any], student0: torch.nn.Module, teacher: torch.nn.Module,
               x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> dict[str, Any]:
    """Excess, its gradient norm and the loss's make-up for one variant on one batch (student in train mode,
    batch-norm statistics per pass, as in a training step; a fresh copy of the student per variant)."""
    student = copy.deepcopy(student0)
    terms = adversarial_terms(name, knobs, student, teacher, x, y, steps, seed)
    student.train()
    t0 = time.perf_counter()
    teacher_clean = teacher(x).float()
    logits_nat = student(x)
    kl_clean = kl_per_sample(soft_targets(teacher_clean), logits_nat) * RSLAD_KL_SCALE  # (B,)
    logits_adv = torch.cat([student(c) for c in terms["inputs"].split(len(x))])
    kl_adv = kl_per_sample(terms["target"], logits_adv) * RSLAD_KL_SCALE
    coef = terms["coef"]
    adv_loss = (coef * kl_adv).sum()
    loss = adv_loss + terms["lambda_nat"] * kl_clean.mean()
    excess = (coef * (kl_adv - kl_clean[terms["sample"]])).sum()
    params = [p for p in student.parameters() if p.requires_grad]
    grads = torch.autograd.grad(excess, params, retain_graph=True)
    grad_norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads))
    loss.backward()
    step_s = terms["craft_s"] + time.perf_counter() - t0
    with torch.no_grad():
        p_clean = F.softmax(logits_nat, 1)[torch.arange(len(y)), y]
        p_adv = F.softmax(logits_adv, 1)
        true = y[terms["sample"]]
        p_true = p_adv[torch.arange(len(true)), true]
        nearly_clean = (p_adv.argmax(1) == true) & (p_true >= p_clean[terms["sample"]] - 0.05)
        adv_weight = float(coef.sum())
        final_u = terms["final_u"]
    return {
        "excess": float(excess.detach()), "excess_grad_norm": float(grad_norm), "loss": float(loss.detach()),
        "adv_weight": adv_weight,
        "final_u_share_of_loss": float((coef * kl_adv)[final_u].sum()) / float(loss),
        "adv_weight_on_nearly_clean": float(coef[nearly_clean].sum()) / max(adv_weight, 1e-12),
        "student_acc_final_u": float((p_adv[final_u].argmax(1) == y).float().mean()),
        "student_acc_clean": float((logits_nat.argmax(1) == y).float().mean()),
        **terms["stats"], "step_s": step_s,
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation over batches of every numeric field."""
    out = {}
    for key in rows[0]:
        vals = [r[key] for r in rows]
        out[key] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    return out


def markdown(report: dict[str, Any]) -> str:
    cols = [("excess", "excess (x1e3)", 1e3, 2), ("excess_grad_norm", "|grad excess|", 1, 3),
            ("final_u_share_of_loss", "final U share of loss", 1, 2),
            ("adv_weight_on_nearly_clean", "adv. weight on nearly clean", 1, 2),
            ("zero_weight_u", "no adv. term (U)", 1, 3), ("step_s", "step s", 1, 2)]
    lines = [f"# adv_path screen ({report['date']})", "", f"`{report['command']}`", "",
             f"Machine: {report['machine']['cpu_model']}, {report['threads']} thread(s); torch "
             f"{report['versions']['torch']}. Teacher: the method comparison's (`{report['teacher']}`); student: "
             f"`{report['student']}` (ResNet-18 1/8, RSLAD for {report['student_steps']} steps); m = "
             f"{report['steps']}; {report['batches']} training batches of {report['batch']} (seeds "
             f"{report['seeds']}); mean ± std over batches. Excess: the adversarial terms' KL above the clean KL, "
             "weighted by the loss's coefficients (RSLAD's scale), and the norm of its gradient.", "",
             "| variant | knobs | " + " | ".join(c[1] for c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name, r in report["variants"].items():
        s = r["summary"]
        knobs = ", ".join(f"{k}={v}" for k, v in r["knobs"].items()) or ("preset" if name == "reconstruction" else "–")
        cells = [f"{s[k]['mean'] * f:.{d}f} ± {s[k]['std'] * f:.{d}f}" if k in s else "–" for k, _, f, d in cols]
        lines.append(f"| {name} | {knobs} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/adv_path_screen-cpu.json")
    ap.add_argument("--data-root", default="/work/shared/data/cifar10")
    ap.add_argument("--student", type=Path, help="a trained student checkpoint (default: train one briefly)")
    ap.add_argument("--student-images", type=int, default=6144, help="images of the brief RSLAD run (x 1 epoch)")
    ap.add_argument("--steps", type=int, default=5, help="m, as in the method comparison")
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--only", nargs="+", help="screen only these variants")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    ckpt = args.student or brief_student(args)
    teacher, _ = load_checkpoint(TEACHER)
    student, meta = load_checkpoint(ckpt)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    data = load_dataset("cifar10", "train", root=args.data_root, download=False)
    names = args.only or list(VARIANTS)
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": ds.command_line(),
        "machine": ds.machine_info(), "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__}, "teacher": str(TEACHER.relative_to(REPO)),
        "student": str(Path(ckpt).resolve().relative_to(REPO)) if Path(ckpt).resolve().is_relative_to(REPO)
        else str(ckpt), "student_steps": args.student_images // args.batch, "steps": args.steps,
        "batches": args.batches, "batch": args.batch, "seeds": list(range(args.batches)), "variants": {},
    }
    batches = []
    for seed in range(args.batches):  # random training images (the last 10,000 of the split), one draw per seed
        idx = torch.randperm(10_000, generator=torch.Generator().manual_seed(seed))[: args.batch] + len(data) - 10_000
        batches.append((data.to_float(idx.numpy()), torch.as_tensor(data.y[idx.numpy()])))
    for name in names:
        rows = [screen_one(name, VARIANTS[name], student, teacher, x, y, args.steps, seed)
                for seed, (x, y) in enumerate(batches)]
        report["variants"][name] = {"knobs": VARIANTS[name], "batches": rows, "summary": summarise(rows)}
        s = report["variants"][name]["summary"]
        print(f"{name:45s} excess {1e3 * s['excess']['mean']:7.2f} ± {1e3 * s['excess']['std']:5.2f}e-3  "
              f"|grad| {s['excess_grad_norm']['mean']:.3f}  final-U share {s['final_u_share_of_loss']['mean']:.2f}  "
              f"step {s['step_s']['mean']:.2f} s", flush=True)
    ds.write_report(args.out, report, markdown(report))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
