"""How strong was a student's training attack? Accuracy of trained students under RSLAD's training attack
against cross-entropy PGD, on the same test images.

RSLAD (Zi et al. 2021) crafts x_adv by PGD on KL(p_T(x) || p_S(x')) from x + 0.001 N(0, I), the student in eval
mode; this script runs exactly that attack (``rkd.distill.rslad.Rslad.craft``, m steps) and, on the same images,
cross-entropy PGD-m and PGD-20 from a uniform random start (``rkd.attacks.pgd``), all at L-inf eps 8/255, step
2/255, and reports each student's clean accuracy, its accuracy under each attack and its top-1 agreement with
the teacher. A student that keeps much more accuracy under the attack it was trained against than under CE PGD
learned to resist that attack, not to be robust.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/method_comparison/training_attack.py \\
        --teacher benchmarks/results/method_comparison/teacher/model.safetensors --data-root ../shared/data/cifar10 \\
        --out benchmarks/results/method_comparison/training_attack.json \\
        runs/method_comparison/*-rslad-s0/student/model.safetensors
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from rkd.attacks.pgd import pgd
from rkd.data import load_dataset
from rkd.distill.rslad import Rslad
from rkd.environment import package_versions
from rkd.models import load_checkpoint
from rkd.stats import wilson_interval


def _acc(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    with torch.inference_mode():
        k = int((model(x).argmax(1) == y).sum())
    lo, hi = wilson_interval(k, len(y))
    return {"acc": k / len(y), "correct": k, "n": len(y), "ci95": [lo, hi]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("students", nargs="+", type=Path, help="trained student checkpoints (.safetensors)")
    p.add_argument("--teacher", type=Path, required=True)
    p.add_argument("--data-root", default=None)
    p.add_argument("--n", type=int, default=500, help="the first n CIFAR-10 test images")
    p.add_argument("--steps", type=int, default=5, help="m, the training attack's steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    data = load_dataset("cifar10", "test", root=args.data_root)
    idx = torch.arange(args.n)
    x, y = data.to_float(idx), torch.as_tensor(data.y[idx]).long()
    teacher, _ = load_checkpoint(args.teacher)
    teacher.eval()
    rows = {}
    for path in args.students:
        t0 = time.perf_counter()
        student, sidecar = load_checkpoint(path)
        student.eval()
        gen = torch.Generator().manual_seed(args.seed)
        rslad = Rslad(student, teacher, steps=args.steps, generator=gen)
        x_kl = rslad.craft(x, y)
        x_ce = pgd(student, x, y, eps=8 / 255, alpha=2 / 255, steps=args.steps, generator=gen).x_adv
        x_ce20 = pgd(student, x, y, eps=8 / 255, alpha=2 / 255, steps=20, generator=gen).x_adv
        with torch.inference_mode():
            agree = float((student(x).argmax(1) == teacher(x).argmax(1)).float().mean())
        rows[str(path)] = {
            "model": sidecar.get("model"), "method": (sidecar.get("metadata") or {}).get("method"),
            "clean": _acc(student, x, y), f"rslad_kl_pgd{args.steps}": _acc(student, x_kl, y),
            f"ce_pgd{args.steps}": _acc(student, x_ce, y), "ce_pgd20": _acc(student, x_ce20, y),
            "top1_agreement_with_teacher": agree, "seconds": time.perf_counter() - t0,
        }
        r = rows[str(path)]
        print(f"{path}: clean {r['clean']['acc']:.1%}, "
              f"RSLAD KL-PGD{args.steps} {r[f'rslad_kl_pgd{args.steps}']['acc']:.1%}, "
              f"CE-PGD{args.steps} {r[f'ce_pgd{args.steps}']['acc']:.1%}, CE-PGD20 {r['ce_pgd20']['acc']:.1%}, "
              f"teacher agreement {agree:.1%}", flush=True)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "data": {"dataset": "cifar10", "split": "test", "first_n": args.n}, "eps": "8/255", "alpha": "2/255",
        "seed": args.seed, "teacher": str(args.teacher),
        "machine": {"processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads()}, "versions": package_versions(), "students": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
