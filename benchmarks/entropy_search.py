"""Entropy calibration's threshold search: ONNX Runtime's ``compute_data()`` vs :mod:`rkd.quantize.kl_threshold`.

For each float ONNX model: ``quant_pre_process``, ONNX Runtime's entropy calibrator (2048 bins, 128 quantized bins)
collects the histograms of every activation once on ``--calib-n`` CIFAR-10 training images (drawn as
``rkd quantize`` draws them); then both searches run on those same histograms, interleaved, ``--repeats`` times.
Records each search's seconds (median, min, max), the ratio, the collection time, and whether every tensor's
(rmin, rmax) is identical.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/entropy_search.py --data-root ../shared/data/cifar10 \
        --onnx r18=PATH/model.onnx --onnx mnv2=PATH/model.onnx --out benchmarks/results/entropy_search-cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _measure(label: str, onnx_path: Path, calib: Any, repeats: int) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from rkd.quantize.calibration import ImageCalibrationReader
    from rkd.quantize.kl_threshold import entropy_thresholds
    from rkd.quantize.ort_static import ENTROPY_BINS, ENTROPY_QUANTIZED_BINS

    with tempfile.TemporaryDirectory(prefix="rkd-entropy-") as tmp:
        pre = Path(tmp) / "model.pre.onnx"
        quant_pre_process(str(onnx_path), str(pre))
        input_name = onnx.load(str(pre)).graph.input[0].name
        calibrator = create_calibrator(
            pre, [], augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.Entropy,
            extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS},
        )
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            calibrator.collect_data(ImageCalibrationReader(calib, input_name, batch_size=32))
        collect_s = time.perf_counter() - t0
        times: dict[str, list[float]] = {"onnxruntime": [], "rkd": []}
        ranges: dict[str, dict[str, tuple[float, float]]] = {}
        for _ in range(repeats):
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                data = calibrator.compute_data()
            times["onnxruntime"].append(time.perf_counter() - t0)
            ranges["onnxruntime"] = {k: (float(v.range_value[0]), float(v.range_value[1])) for k, v in data.items()}
            t0 = time.perf_counter()
            ranges["rkd"] = entropy_thresholds(calibrator.collector.histogram_dict, ENTROPY_QUANTIZED_BINS)
            times["rkd"].append(time.perf_counter() - t0)
    differ = sorted(k for k in ranges["onnxruntime"] if ranges["onnxruntime"][k] != ranges["rkd"].get(k))
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {
        "model": label, "onnx": str(onnx_path), "tensors": len(ranges["onnxruntime"]), "collect_s": collect_s,
        "search_s": {k: {"median": med[k], "min": min(v), "max": max(v), "runs": v} for k, v in times.items()},
        "speedup": med["onnxruntime"] / med["rkd"],
        "identical_ranges": not differ and ranges["onnxruntime"].keys() == ranges["rkd"].keys(),
        "differing_tensors": differ,
    }
    print(f"{label}: {row['tensors']} tensors, collect {collect_s:.1f} s, search ORT {med['onnxruntime']:.1f} s vs "
          f"rkd {med['rkd']:.1f} s ({row['speedup']:.1f}x), identical: {row['identical_ranges']}", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", action="append", required=True, help="LABEL=PATH of a float ONNX classifier")
    p.add_argument("--data-root", required=True, help="directory holding CIFAR-10's train.npz")
    p.add_argument("--calib-n", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    from rkd.data import load_dataset
    from rkd.data.subsets import select_indices
    from rkd.environment import cpu_description, package_versions

    train = load_dataset("cifar10", "train", root=args.data_root)
    calib = train.to_float(select_indices(len(train), args.calib_n, seed=args.seed, mode="random")).numpy()
    rows = []
    for item in args.onnx:
        label, _, path = item.partition("=")
        rows.append(_measure(label, Path(path), calib, args.repeats))
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "calib_n": args.calib_n, "seed": args.seed,
        "repeats": args.repeats, "machine": {**cpu_description(), "python": platform.python_version()},
        "versions": package_versions(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
