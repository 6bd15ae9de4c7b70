"""The gradient interpreter on an ONNX model rkd did not build: torchvision MobileNetV2 (width 1.0) at 224 px, INT8.

The model: ``rkd.testing.torchvision_classifier("mobilenet_v2", seed=--seed, image_size=224)``: random weights,
BatchNorm statistics from generated images, the 10-class head refitted on the ``synthetic`` data set (no
pretrained weights can be fetched here). Exported by torch's TorchScript exporter, quantized by ONNX Runtime's
``quantize_static`` (MinMax on 16 ``synthetic`` train images, per-channel int8 weights, uint8 activations) in QDQ
and in QOperator format. For each file:

- top-1 agreement of the interpreter (:func:`rkd.quantize.surrogate.onnx_module`) with ONNX Runtime (CPU, all graph
  optimisations) on the first ``--n`` ``synthetic`` test images upsampled to 224 px, with a Wilson 95% interval;
- cost at batch ``--batch``: one interpreter forward + backward (input gradient of the cross-entropy at the
  model's own prediction) against one ONNX Runtime forward, interleaved over ``--rounds`` rounds after one warm-up,
  median [min-max] in milliseconds; torch and ONNX Runtime both get ``--threads`` intra-op threads.

Run::

    .venv/bin/python benchmarks/foreign_onnx.py --out benchmarks/results/foreign_onnx-cpu.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as ds  # noqa: E402  (machine_info, write_report)

from rkd.stats import wilson_interval  # noqa: E402


def _ms(values: list[float]) -> dict[str, float]:
    return {"median_ms": 1000 * statistics.median(values), "min_ms": 1000 * min(values), "max_ms": 1000 * max(values)}


def measure(path: Path, x: torch.Tensor, batch: int, rounds: int, threads: int) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort

    from rkd.quantize.surrogate import onnx_module

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    module = onnx_module(path)
    ref = torch.cat([torch.from_numpy(sess.run(None, {name: x[i:i + batch].numpy()})[0])
                     for i in range(0, len(x), batch)])
    with torch.no_grad():
        out = torch.cat([module(x[i:i + batch]) for i in range(0, len(x), batch)])
    agree = int((out.argmax(1) == ref.argmax(1)).sum())
    lo, hi = wilson_interval(agree, len(x))
    xb = x[:batch]

    def interp() -> None:
        xi = xb.clone().requires_grad_(True)
        logits = module(xi)
        torch.autograd.grad(torch.nn.functional.cross_entropy(logits, logits.detach().argmax(1)), xi)

    def engine() -> None:
        sess.run(None, {name: xb.numpy()})

    times: dict[str, list[float]] = {"interpreter_fwd_bwd": [], "ort_fwd": []}
    interp(), engine()  # warm-up
    for _ in range(rounds):
        for key, fn in (("interpreter_fwd_bwd", interp), ("ort_fwd", engine)):
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    ops = sorted({n.op_type for n in onnx.load(str(path)).graph.node})
    cost = {k: _ms(v) for k, v in times.items()}
    ratio = cost["interpreter_fwd_bwd"]["median_ms"] / cost["ort_fwd"]["median_ms"]
    return {"ops": ops, "n": len(x), "top1_agreement": agree / len(x), "top1_agreement_wilson95": [lo, hi],
            "max_abs_logit_diff": float((out - ref).abs().max()), "cost": cost, "ratio_median": ratio}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/foreign_onnx-cpu.json"))
    args = p.parse_args(argv)

    from rkd.testing import export_onnx, ort_quantize, synthetic_images, torchvision_classifier

    torch.set_num_threads(args.threads)
    model = torchvision_classifier("mobilenet_v2", seed=args.seed, image_size=224)
    x = synthetic_images(args.n, 224)[0]
    calib = synthetic_images(16, 224, split="train")[0]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        f = export_onnx(model, Path(tmp) / "mnv2.onnx", exporter="legacy", image_size=224)
        with torch.no_grad():
            float_top1 = torch.cat([model(x[i:i + 50]) for i in range(0, len(x), 50)]).argmax(1)
        for fmt in ("qdq", "qoperator"):
            q = ort_quantize(f, Path(tmp) / f"mnv2.{fmt}.onnx", calib, quant_format=fmt, per_channel=True,
                             activations="uint8")
            results[fmt] = measure(q, x, args.batch, args.rounds, args.threads)
            import onnxruntime as ort

            sess = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])
            int8 = torch.cat([torch.from_numpy(sess.run(None, {"input": x[i:i + 50].numpy()})[0])
                              for i in range(0, len(x), 50)]).argmax(1)
            results[fmt]["int8_vs_float_top1"] = float((int8 == float_top1).float().mean())
            print(fmt, json.dumps({k: v for k, v in results[fmt].items() if k != "ops"}), flush=True)
    report = {
        "benchmark": "foreign_onnx", "date": dt.date.today().isoformat(), "machine": ds.machine_info(),
        "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
        "command": ds.command_line(),
        "model": f"torchvision mobilenet_v2 (width 1.0), random weights (seed {args.seed}), "
                 "BatchNorm statistics from generated "
                 "images, 10-class head refitted on the synthetic data set; TorchScript exporter; ONNX Runtime "
                 "quantize_static MinMax on 16 synthetic train images, per-channel int8 weights, uint8 "
                 "activations",
        "images": f"the first {args.n} synthetic test images, upsampled to 224 px",
        "batch": args.batch, "rounds": args.rounds, "threads": args.threads, "results": results,
    }
    lines = [
        "# The gradient interpreter on a foreign ONNX model (MobileNetV2, 224 px, INT8)", "",
        f"Model: {report['model']}. Images: {report['images']}. Cost: batch {args.batch}, {args.rounds} interleaved "
        f"rounds after a warm-up, {args.threads} threads for torch and ONNX Runtime (CPU), median [min-max] ms.", "",
        "| format | top-1 agreement (Wilson 95%) | max abs logit diff | INT8 vs float top-1 | interpreter fwd+bwd ms "
        "| ONNX Runtime fwd ms | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for fmt, r in results.items():
        c = r["cost"]
        fb, fw = c["interpreter_fwd_bwd"], c["ort_fwd"]
        lo, hi = r["top1_agreement_wilson95"]
        lines.append(f"| {fmt} | {r['top1_agreement']:.3f} ({lo:.3f}-{hi:.3f}), n={r['n']} | "
                     f"{r['max_abs_logit_diff']:.3g} | {r['int8_vs_float_top1']:.2f} | {fb['median_ms']:.0f} "
                     f"[{fb['min_ms']:.0f}-{fb['max_ms']:.0f}] | {fw['median_ms']:.0f} [{fw['min_ms']:.0f}-"
                     f"{fw['max_ms']:.0f}] | {r['ratio_median']:.1f}x |")
    lines += ["", f"Command: `{report['command']}`; {report['date']}; {report['machine']['cpu_model']}; "
              f"torch {report['torch']}, onnxruntime {report['onnxruntime']}.", ""]
    ds.write_report(args.out, report, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
