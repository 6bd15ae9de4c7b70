"""Export a checkpoint as a deployment bundle: model.onnx + manifest.json, with parity against torch; --target
trt also builds a TensorRT engine."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from rkd.cli._common import handle_errors, human_size, out


class Precision(str, Enum):
    """TensorRT engine precision: int8 builds model.int8.onnx (explicit Q/DQ), fp16/fp32 build model.onnx."""

    int8 = "int8"
    fp16 = "fp16"
    fp32 = "fp32"


class Target(str, Enum):
    """What to build: the ONNX bundle, or the bundle plus a TensorRT engine."""

    onnx = "onnx"
    trt = "trt"


def _render(manifest: dict[str, Any], out_dir: Path) -> None:
    table = Table(title=f"bundle {out_dir}")
    for col in ("file", "size", "sha256"):
        table.add_column(col, justify="right" if col == "size" else "left")
    for name, entry in sorted(manifest["files"].items()):
        table.add_row(name, human_size(int(entry["bytes"])), str(entry["sha256"])[:16] + "…")
    out.print(table)
    section = manifest.get("export") or {}
    parity, pdata = section.get("parity"), section.get("parity_data")
    if parity:
        synthetic = " (synthetic: a smoke check, not real images)" if pdata.get("synthetic") else ""
        ptable = Table(title=f"parity torch vs ONNX Runtime CPU: {pdata['dataset']}{synthetic}, "
                       f"{pdata['split']} first n={parity['n']}", show_header=False)
        ptable.add_row("max |logit diff|", f"{parity['max_abs_diff']:.3g}")
        ptable.add_row("mean |logit diff|", f"{parity['mean_abs_diff']:.3g}")
        ptable.add_row("max |logit|", f"{parity['max_abs_logit']:.3g}")
        ptable.add_row("top-1 agreement", f"{parity['top1_agreement']:.2%} "
                       f"({parity['n'] - parity['top1_disagreements']}/{parity['n']})")
        out.print(ptable)
    out.print(f"opset {section.get('opset')}, exporter {section.get('exporter')}; manifest: "
              f"{out_dir / 'manifest.json'}", highlight=False)


def export(
    checkpoint: Annotated[Path, typer.Argument(metavar="CHECKPOINT",
                                               help="rkd checkpoint (.safetensors with its .json sidecar).",
                                               show_default=False)],
    target: Annotated[Target, typer.Option(help="onnx: the ONNX bundle; trt: also a TensorRT engine "
                                           "(needs tensorrt and a CUDA GPU).")] = Target.onnx,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Bundle directory "
                                                    "\\[default: CHECKPOINT's folder/bundle].")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle (once the new one is "
                                        "complete).")] = False,
    parity_data: Annotated[Optional[str], typer.Option(
        "--parity-data", help="Test images for the torch/ONNX parity check: cifar10, cifar100, npz:PATH, "
        "imagefolder:PATH, or synthetic (offline; labelled as such) \\[default: the data set the checkpoint "
        "was trained on, else cifar10].", show_default=False)] = None,
    data_root: Annotated[Optional[str], typer.Option("--data-root", help="Download/cache folder \\[default: "
                                                     "$RKD_DATA_ROOT, else ~/.cache/rkd/data].")] = None,
    parity_n: Annotated[int, typer.Option("--parity-n", help="Number of test images for parity.")] = 256,
    opset: Annotated[int, typer.Option(help="ONNX opset (17-20: torch's legacy exporter).")] = 17,
    precision: Annotated[Precision, typer.Option(
        help="--target trt: engine precision; int8 needs the bundle's model.int8.onnx (rkd quantize).")
    ] = Precision.int8,
) -> None:
    """Export a checkpoint as a deployment bundle: model.onnx + manifest.json, with parity against torch;
    --target trt also builds a TensorRT engine."""
    with handle_errors():
        from rkd import api

        res = api.export(checkpoint, target=target.value, out=out_dir, force=force, parity_data=parity_data,
                         data_root=data_root, parity_n=parity_n, opset=opset, precision=precision.value)
        if res.reused:
            out.print(f"reusing bundle {res.bundle} (exported from this checkpoint)", highlight=False)
        _render(res.manifest, res.bundle)
