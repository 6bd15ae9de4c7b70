"""How closely the fake-quant surrogate follows ONNX Runtime's INT8 engine, and why it can fall short.

``rkd verify`` attacks an INT8 engine with the gradients of its surrogate (:mod:`rkd.quantize.surrogate`), which
interprets the QDQ graph with torch ops. For each bundle this measures, on the first ``--n`` test images, the
top-1 agreement and logit difference of the surrogate with:

- ONNX Runtime at ``ORT_DISABLE_ALL``: the QDQ graph run node by node (DequantizeLinear -> float Conv ->
  QuantizeLinear), the surrogate's own arithmetic up to float summation order and rounding ties;
- ONNX Runtime at ``ORT_ENABLE_ALL`` (what ``rkd verify`` runs): DQ -> op -> Q fused into integer kernels that
  requantize with a float multiplier;
- the surrogate itself with its fake-quant replaced by the ONNX spec's ``round(x / scale)`` (torch's
  ``fake_quantize_per_*_affine`` computes ``round(x * (1 / scale))``): how much top-1 moves when only the
  rounding of exact ties changes, i.e. the model's own sensitivity to one-LSB flips.

Top-1 agreement counts are given with Wilson 95% intervals; the top-1 margins (largest minus second logit) show
how close to ties the model's decisions are.

Run (one thread; bundles from ``rkd quantize``)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/surrogate_agreement.py --data-root ../shared/data/cifar10 \\
        --bundle runs/method_comparison/deploy-r18-ptq/bundle --bundle runs/method_comparison/deploy-mnv2-ptq/bundle \\
        --out benchmarks/results/surrogate_agreement-cpu.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

import _common as ds  # the helpers shared by the benchmarks (this folder is on sys.path)
import numpy as np
import torch

from rkd.stats import wilson_interval


def _onnx_rounding(self: Any, x: torch.Tensor, a: dict[str, Any]) -> torch.Tensor:
    """The surrogate's fake-quant with ONNX QuantizeLinear's ``round(x / scale)`` (forward only)."""
    scale, zp = getattr(self, f"{a['key']}_scale"), getattr(self, f"{a['key']}_zp")
    if a["per_channel"]:
        axis = a["axis"] + x.dim() if a["axis"] < 0 else a["axis"]
        shape = [1] * x.dim()
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    else:
        scale, zp = scale[0], zp[0]
    q = (torch.round(x / scale) + zp).clamp(a["qmin"], a["qmax"])
    return (q - zp) * scale


def _compare(a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    agree = int((a.argmax(1) == b.argmax(1)).sum())
    lo, hi = wilson_interval(agree, len(a))
    diff = (a - b).abs()
    return {"top1_agreement": agree / len(a), "agree": agree, "n": len(a), "ci95": [lo, hi],
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}


def measure(bundle: Path, x: torch.Tensor) -> dict[str, Any]:
    import onnxruntime as ort

    from rkd.quantize.surrogate import OnnxGraphModule, load_surrogate

    surrogate = load_surrogate(bundle / "surrogate.int8.safetensors")
    with torch.no_grad():
        ours = surrogate(x)
    rows: dict[str, Any] = {}
    levels = ort.GraphOptimizationLevel
    for name, level in (("ort_disable_all", levels.ORT_DISABLE_ALL), ("ort_enable_all", levels.ORT_ENABLE_ALL)):
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.graph_optimization_level = level
        session = ort.InferenceSession(str(bundle / "model.int8.onnx"), options, providers=["CPUExecutionProvider"])
        engine = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        rows[f"surrogate_vs_{name}"] = _compare(ours, engine)
    original = OnnxGraphModule._fake_quant
    try:
        OnnxGraphModule._fake_quant = _onnx_rounding  # type: ignore[method-assign]
        with torch.no_grad():
            spec_rounding = surrogate(x)
    finally:
        OnnxGraphModule._fake_quant = original  # type: ignore[method-assign]
    rows["surrogate_vs_surrogate_onnx_rounding"] = _compare(ours, spec_rounding)
    top2 = ours.topk(2, dim=1).values
    margin = (top2[:, 0] - top2[:, 1]).numpy()
    manifest = json.loads((bundle / "manifest.json").read_text())
    return {"bundle": str(bundle), "model": manifest["model"], "comparisons": rows,
            "margin_quantiles": {str(q): float(np.quantile(margin, q)) for q in (0.05, 0.25, 0.5)},
            "max_abs_logit": float(ours.abs().max())}


def markdown(record: dict[str, Any]) -> str:
    lines = [f"# Surrogate vs engine agreement ({record['date']})", "",
             f"`{record['command']}`", "",
             f"Machine: {record['machine']['cpu_model']} ({record['machine']['cpu_count']} cores), torch "
             f"{record['torch']}, onnxruntime {record['onnxruntime']}, {record['threads']} thread(s); data: first "
             f"{record['n']} CIFAR-10 test images.", "",
             "| bundle | model | vs ORT DISABLE_ALL | vs ORT ENABLE_ALL | vs itself, ONNX rounding | max abs logit "
             "diff (ENABLE_ALL) | median top-1 margin |",
             "|---|---|---|---|---|---|---|"]
    for r in record["bundles"]:
        c = r["comparisons"]
        cells = []
        for key in ("surrogate_vs_ort_disable_all", "surrogate_vs_ort_enable_all",
                    "surrogate_vs_surrogate_onnx_rounding"):
            v = c[key]
            cells.append(f"{100 * v['top1_agreement']:.1f}% [{100 * v['ci95'][0]:.1f}-{100 * v['ci95'][1]:.1f}]")
        m = r["model"]
        lines.append(f"| `{r['bundle']}` | {m['name']} w{m.get('width')} | {' | '.join(cells)} | "
                     f"{c['surrogate_vs_ort_enable_all']['max_abs_diff']:.3f} | {r['margin_quantiles']['0.5']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, action="append", required=True, help="rkd quantize bundle folder")
    parser.add_argument("--data-root", type=Path, required=True, help="folder with CIFAR-10 test.npz")
    parser.add_argument("--n", type=int, default=1000, help="first N test images (default 1000)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write (and .md beside it)")
    args = parser.parse_args()
    import onnxruntime as ort

    data = np.load(args.data_root / "test.npz")
    x = torch.from_numpy(data["x"][: args.n]).permute(0, 3, 1, 2).float().div(255).contiguous()
    record = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": ds.command_line(), "machine": ds.machine_info(), "torch": torch.__version__,
              "onnxruntime": ort.__version__, "threads": torch.get_num_threads(), "n": len(x),
              "bundles": [measure(b, x) for b in args.bundle]}
    ds.write_report(args.out, record, markdown(record), indent=1)
    print(markdown(record))


if __name__ == "__main__":
    main()
