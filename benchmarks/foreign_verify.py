"""What ``rkd verify`` costs on a model rkd did not make: torchvision's MobileNetV2 (width 1.0) at 224 px,
exported by torch's TorchScript exporter with the ImageNet normalisation left to the caller, quantized by ONNX
Runtime (QDQ and QOperator), verified from an image folder with its preprocessing stated on the command line.

The model has random weights (``rkd.testing.torchvision_classifier``: BatchNorm statistics and a refitted
head on rkd's ``synthetic`` data), so its accuracy says nothing; the run shows the path end to end and its
cost per format. Writes ``--out`` (JSON) and the Markdown beside it.

    python benchmarks/foreign_verify.py --out benchmarks/results/foreign_verify-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class TakesNormalised(nn.Module):
    """``model`` as a team would ship it: its input already ImageNet-normalised by the caller."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z * self.std + self.mean)


def write_folder(root: Path, n: int, size: int) -> Path:
    """``n`` images of rkd's synthetic test split as PNG files at ``size``, one folder per class."""
    from PIL import Image

    from rkd.testing import synthetic_images

    x, y = synthetic_images(n, size=size)
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        folder = root / f"class{int(label)}"
        folder.mkdir(parents=True, exist_ok=True)
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i:04d}.png")
    return root


def _shown(arg: str) -> str:
    """A command-line argument with temporary folders cut to their last part (``imagefolder:images``)."""
    prefix, sep, rest = arg.rpartition(":") if arg.startswith("imagefolder:") else ("", "", arg)
    return prefix + sep + (Path(rest).name if rest.startswith("/") else rest)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--attacks", default="pgd5")
    ap.add_argument("--eps", default="4/255")
    args = ap.parse_args()
    from typer.testing import CliRunner

    from rkd.cli.app import app
    from rkd.environment import device_description
    from rkd.testing import export_onnx, ort_quantize, smooth_images, torchvision_classifier

    rows = []
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        model = TakesNormalised(torchvision_classifier("mobilenet_v2", 10, seed=0, image_size=args.size)).eval()
        fp32 = export_onnx(model, tmp / "mnv2.onnx", image_size=args.size)
        calib = (smooth_images(16, args.size, seed=1) - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(
            1, 3, 1, 1)
        folder = write_folder(tmp / "images", args.n, args.size)
        for fmt in ("qdq", "qoperator"):
            int8 = ort_quantize(fp32, tmp / f"mnv2.{fmt}.onnx", calib, quant_format=fmt, per_channel=True)
            report = tmp / f"verify-{fmt}"
            cmd = ["verify", "--engine", str(int8), "--reference", str(fp32), "--data", f"imagefolder:{folder}",
                   "--mean", "imagenet", "--std", "imagenet", "--n", str(args.n), "--attacks", args.attacks,
                   "--eps", args.eps, "--no-gates", "--batch-size", "16", "--report", str(report)]
            t0 = time.perf_counter()
            res = CliRunner().invoke(app, cmd)
            seconds = time.perf_counter() - t0
            if res.exit_code != 0:
                print(res.output, file=sys.stderr)
                return 1
            rep = json.loads((report / "verify.json").read_text())
            rows.append({"format": fmt, "seconds": round(seconds, 1), "clean_acc": rep["clean_acc"],
                         "robust_acc": rep["robust_acc"], "float_clean_acc": rep["float"]["clean_acc"],
                         "agreement_clean": rep["agreement"]["clean"]["top1_agreement"],
                         "agreement_adversarial": (rep["agreement"]["adversarial"] or {}).get("top1_agreement"),
                         "surrogate": rep["surrogate"]["kind"], "timing": rep["timing"],
                         "command": "rkd " + " ".join(_shown(c) for c in cmd)})
            print(f"{fmt}: {seconds:.1f} s, clean {rep['clean_acc']:.1%}, agreement "
                  f"{rows[-1]['agreement_clean']:.1%}", file=sys.stderr)
    result = {"benchmark": "foreign_verify", "model": "torchvision mobilenet_v2 1.0, random weights (seed 0)",
              "size": args.size, "n": args.n, "attacks": args.attacks, "eps": args.eps,
              "threads": torch.get_num_threads(), "machine": device_description("cpu"),
              "load_average": os.getloadavg(), "torch": torch.__version__, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# rkd verify on a model rkd did not make: MobileNetV2 at {args.size} px, INT8 by ONNX Runtime", "",
             f"{result['model']}; {args.n} generated images (rkd's synthetic test split at {args.size} px, PNG); "
             f"attacks {args.attacks}, eps {args.eps}; {result['threads']} threads; load average at the end "
             f"{result['load_average'][0]:.1f} (other jobs on the machine). Accuracy is meaningless (random "
             "weights); the rows show the path runs and what it costs.", "",
             "| format | verify wall s | engine s | float s | engine clean | float clean | agreement clean / adv | "
             "surrogate |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        adv = f"{r['agreement_adversarial']:.1%}" if r["agreement_adversarial"] is not None else "-"
        lines.append(f"| {r['format']} | {r['seconds']} | {r['timing'].get('engine_s')} | {r['timing'].get('float_s')} "
                     f"| {r['clean_acc']:.1%} | {r['float_clean_acc']:.1%} | {r['agreement_clean']:.1%} / {adv} | "
                     f"{r['surrogate']} |")
    lines += ["", "Command (per format): `" + rows[0]["command"] + "`", ""]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
