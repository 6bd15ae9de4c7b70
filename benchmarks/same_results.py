"""Same results before and after a refactor: ``rkd eval`` and ``rkd verify`` reports, timings left out.

``record DIR`` builds a tiny classifier on synthetic data (fixed seeds), its rkd checkpoint and an INT8 ONNX
Runtime bundle, then runs the real CLI: ``rkd eval`` on the checkpoint (every attack kind, AutoAttack
included) and ``rkd verify`` on the INT8 engine, the float ONNX model and the checkpoint itself (gates,
transfer, curve). Each report is written to DIR with what legitimately changes from run to run removed
(timings, seconds, versions, device, paths). ``compare A B`` says whether two recordings are identical, and
where not, which keys differ. Run it on the commit before a change and on the change itself::

    git stash; python benchmarks/same_results.py record /tmp/before; git stash pop
    python benchmarks/same_results.py record /tmp/after
    python benchmarks/same_results.py compare /tmp/before /tmp/after

About a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

VOLATILE = {"timing", "seconds", "versions", "device", "total_s", "path", "file", "checkpoint", "created", "bundle",
            "png"}
DATA = "synthetic:n=400"


def _strip(value: Any) -> Any:
    """``value`` without the keys in VOLATILE, at any depth."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _rkd(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "rkd", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"})
    if proc.returncode not in (0, 1):
        raise SystemExit(f"rkd {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def record(out: Path) -> None:
    """Build the artifacts and write one stripped report per command to ``out``."""
    import torch

    from rkd.data import load_dataset
    from rkd.models import save_checkpoint
    from rkd.quantize.pipeline import quantize_checkpoint
    from rkd.testing import train_tiny_classifier

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = load_dataset("synthetic", "train")
        meta = {"data": {"dataset": "synthetic", "classes": list(data.classes)},
                "threat": {"norm": "linf", "eps": 8 / 255, "alpha": 2 / 255}}
        ckpt = save_checkpoint(train_tiny_classifier(), root / "student.safetensors", metadata=meta)
        quantize_checkpoint(ckpt, root / "bundle", calib_data=("synthetic", {}), calib_n=128, eval_n=0)
        runs = {
            "eval": ["eval", str(ckpt), "--data", DATA, "--n", "96", "--sample", "random", "--seed", "3",
                     "--attacks", "clean,fgsm,pgd10,pgd5r2,cw,autoattack,square",
                     "--report", str(root / "eval.json")],
            "eval-l2": ["eval", str(ckpt), "--data", DATA, "--n", "64", "--norm", "l2", "--eps", "0.5",
                        "--alpha", "0.1", "--attacks", "clean,pgd10", "--report", str(root / "eval-l2.json")],
        }
        gates = ["--gate", "drop.robust_acc<=0.2", "--gate", "robust_acc>=0.01", "--gate", "agreement.clean>=0.9"]
        for name, engine in (("verify-int8", "bundle/model.int8.onnx"), ("verify-float", "bundle/model.onnx"),
                             ("verify-checkpoint", "student.safetensors")):
            runs[name] = ["verify", "--engine", str(root / engine), "--data", DATA, "--n", "64",
                          "--attacks", "fgsm,pgd5,cw,autoattack", *gates, "--curve", "--curve-eps", "0,4/255,8/255",
                          "--report", str(root / name)]
        for name, args in runs.items():
            _rkd(*args)
            src = root / f"{name}.json" if name.startswith("eval") else root / name / "verify.json"
            report = _strip(json.loads(src.read_text()))
            (out / f"{name}.json").write_text(json.dumps(report, indent=1, sort_keys=True))
            print(f"{name}: recorded")


def _diff(a: Any, b: Any, where: str, found: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                found.append(f"{where}.{key}: only in {'after' if key not in a else 'before'}")
            else:
                _diff(a[key], b[key], f"{where}.{key}", found)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            _diff(u, v, f"{where}[{i}]", found)
    elif a != b:
        found.append(f"{where}: {str(a)[:80]} != {str(b)[:80]}")


def compare(before: Path, after: Path) -> int:
    """0 when every report in ``before`` equals its namesake in ``after``, else 1 with the differing keys."""
    status = 0
    for path in sorted(before.glob("*.json")):
        other = after / path.name
        if not other.is_file():
            print(f"{path.stem}: missing in {after}")
            status = 1
            continue
        found: list[str] = []
        _diff(json.loads(path.read_text()), json.loads(other.read_text()), path.stem, found)
        print(f"{path.stem}: {'identical' if not found else f'{len(found)} difference(s)'}")
        for line in found[:20]:
            print(f"  {line}")
        status |= bool(found)
    return status


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("record").add_argument("out", type=Path)
    p = sub.add_parser("compare")
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    args = ap.parse_args()
    if args.cmd == "record":
        record(args.out)
    else:
        raise SystemExit(compare(args.before, args.after))


if __name__ == "__main__":
    main()
