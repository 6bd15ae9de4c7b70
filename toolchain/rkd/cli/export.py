"""Export a checkpoint as a deployment bundle: model.onnx + manifest.json, with parity against torch; --target
trt also builds a TensorRT engine."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from rkd.cli._common import check_output_path, handle_errors, human_size, out

_TRT_HINT = "pip install 'rkd[tensorrt]' on a machine with NVIDIA's index, or use NVIDIA's PyTorch container"


class Precision(str, Enum):
    """TensorRT engine precision: int8 builds model.int8.onnx (explicit Q/DQ), fp16/fp32 build model.onnx."""

    int8 = "int8"
    fp16 = "fp16"
    fp32 = "fp32"


class Target(str, Enum):
    """What to build: the ONNX bundle, or the bundle plus a TensorRT engine."""

    onnx = "onnx"
    trt = "trt"


def _engine_builder() -> Callable[..., Any]:
    """``rkd.deploy.tensorrt_build.build_bundle_engine`` once tensorrt and a CUDA GPU are known to be there;
    otherwise MissingDependencyError (exit 3) naming what is missing, before anything is written."""
    from rkd.errors import MissingDependencyError

    try:
        from rkd.deploy.tensorrt_build import build_bundle_engine, import_tensorrt, require_cuda
    except ImportError as exc:
        raise MissingDependencyError(
            f"--target trt cannot load rkd.deploy.tensorrt_build ({exc}); {_TRT_HINT}"
        ) from None
    import_tensorrt()
    require_cuda("--target trt (building a TensorRT engine)")
    return build_bundle_engine


def _reusable(out_dir: Path, checkpoint: Path) -> bool:
    """True when ``out_dir`` is a valid bundle exported from this very checkpoint (same weights sha256)."""
    from rkd.deploy.bundle import read_manifest
    from rkd.errors import RkdError
    from rkd.models.checkpoint import file_sha256

    if not (out_dir / "manifest.json").is_file() or not checkpoint.is_file():
        return False
    try:
        manifest = read_manifest(out_dir, verify=True)
    except RkdError:
        return False
    return manifest.get("source", {}).get("sha256") == file_sha256(checkpoint)


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
    checkpoint: Annotated[Path, typer.Argument(metavar="CHECKPOINT", help="rkd checkpoint (.safetensors with its .json sidecar).",
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
        from rkd.data import parse_data_arg
        from rkd.deploy.bundle import read_manifest
        from rkd.deploy.export import RECORDED, export_bundle
        from rkd.errors import UsageError

        chosen = parse_data_arg(parity_data) if parity_data is not None else RECORDED
        bundle = out_dir or checkpoint.parent / "bundle"
        if bundle.resolve() == Path.cwd().resolve() or not bundle.resolve().name:
            raise UsageError(f"--out '{bundle}' is the current folder; give a bundle folder inside it")
        check_output_path(bundle, "--out", folder=True)
        build = _engine_builder() if target is Target.trt else None
        if build is not None and not force and _reusable(bundle, checkpoint):
            out.print(f"reusing bundle {bundle} (exported from this checkpoint)", highlight=False)
        elif build is not None and precision is Precision.int8:
            raise UsageError(
                "--target trt --precision int8 builds from the bundle's model.int8.onnx, which a fresh "
                f"export lacks: export, quantize into {bundle}, then rerun this; or use --precision fp16"
            )
        else:
            export_bundle(checkpoint, bundle, force=force, parity_data=chosen,
                          data_root=data_root, parity_n=parity_n, opset=opset)
        if build is not None:
            build(bundle, precision=precision.value)
        _render(read_manifest(bundle, verify=False), bundle)
