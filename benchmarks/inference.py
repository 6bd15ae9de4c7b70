"""Inference cost on this machine: torch eager FP32 vs ONNX Runtime FP32 vs ONNX Runtime INT8 (both schemes).

For one bundle, ``rkd bench BUNDLE`` is the way to measure this (every runtime the bundle can run here, JSON and
a table; ``rkd.deploy.bench.bench_bundle`` in Python). This script compares two bundles of one checkpoint, the
``cpu`` and ``trt`` quantization profiles, against torch eager, with the same timing loop
(``rkd.deploy.bench.measure``): batch-1 latency (median and p90 over ``--runs`` calls) and batch-256 throughput
(images/s, median over ``--runs`` calls), measured interleaved (one call of each variant per round, the order
rotating) so that background load hits all variants alike; ratios against torch eager FP32 from the same run;
model file sizes.

    .venv/bin/python benchmarks/inference.py --checkpoint CKPT --bundle-cpu DIR --bundle-trt DIR \
        --out benchmarks/results/inference-cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _variants(args: argparse.Namespace) -> dict[str, tuple[Callable[[torch.Tensor], Any], Path]]:
    from rkd.deploy.bench import ORT_SESSION_CONFIG
    from rkd.deploy.runtimes import OnnxRuntime
    from rkd.models import load_checkpoint

    model, _ = load_checkpoint(args.checkpoint)
    model.eval()

    def eager(x: torch.Tensor) -> Any:
        with torch.inference_mode():
            return model(x)

    out: dict[str, tuple[Callable[[torch.Tensor], Any], Path]] = {"torch eager fp32": (eager, Path(args.checkpoint))}
    for label, path in (("onnxruntime fp32", args.bundle_cpu / "model.onnx"),
                        ("onnxruntime int8 cpu (uint8 asym.)", args.bundle_cpu / "model.int8.onnx"),
                        ("onnxruntime int8 trt (int8 sym.)", args.bundle_trt / "model.int8.onnx")):
        rt = OnnxRuntime(path, batch_size=args.batch, session_config=ORT_SESSION_CONFIG)
        out[label] = (rt.predict, path)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--bundle-cpu", type=Path, required=True, help="bundle quantized with --scheme cpu")
    p.add_argument("--bundle-trt", type=Path, required=True, help="bundle quantized with --scheme trt")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    variants = _variants(args)
    from rkd.deploy.bench import measure

    x1, xb = torch.rand(1, 3, 32, 32), torch.rand(args.batch, 3, 32, 32)
    calls = {name: ((lambda fn=fn: fn(x1)), (lambda fn=fn: fn(xb))) for name, (fn, _) in variants.items()}
    timings, _ = measure(calls, batch_size=args.batch, warmup=1, iters=args.runs)
    lat = {name: t.latency_ms for name, t in timings.items()}
    thr = {name: t.throughput for name, t in timings.items()}
    base_lat = statistics.median(lat["torch eager fp32"])
    base_thr = statistics.median(thr["torch eager fp32"])
    rows = {}
    for name, (_, path) in variants.items():
        l_sorted = sorted(lat[name])
        rows[name] = {
            "latency_ms_b1_median": statistics.median(l_sorted),
            "latency_ms_b1_p90": l_sorted[int(0.9 * (len(l_sorted) - 1))],
            "latency_ms_b1_min_max": [l_sorted[0], l_sorted[-1]],
            f"throughput_img_s_b{args.batch}_median": statistics.median(thr[name]),
            "throughput_min_max": [min(thr[name]), max(thr[name])],
            "latency_speedup_vs_torch": base_lat / statistics.median(l_sorted),
            "throughput_ratio_vs_torch": statistics.median(thr[name]) / base_thr,
            "file": str(path), "file_bytes": path.stat().st_size,
        }
    from rkd.environment import cpu_description, package_versions

    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "runs": args.runs, "batch": args.batch,
        "threads": args.threads, "machine": {**cpu_description(), "python": platform.python_version()},
        "versions": package_versions(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"| variant | b1 latency median (p90) ms | b{args.batch} img/s (min-max) | vs torch (lat, thr) | file |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        t = r[f"throughput_img_s_b{args.batch}_median"]
        lines.append(
            f"| {name} | {r['latency_ms_b1_median']:.2f} ({r['latency_ms_b1_p90']:.2f}) | {t:.0f} "
            f"({r['throughput_min_max'][0]:.0f}-{r['throughput_min_max'][1]:.0f}) | "
            f"{r['latency_speedup_vs_torch']:.2f}x, {r['throughput_ratio_vs_torch']:.2f}x | "
            f"{r['file_bytes'] / 1e6:.2f} MB |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
