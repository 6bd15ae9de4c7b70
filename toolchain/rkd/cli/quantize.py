"""Quantize a checkpoint to INT8 (ONNX Runtime static QDQ, calibrated on real training images) into its
bundle, with a fake-quant surrogate for gradients, and compare float vs INT8 clean and PGD-20 accuracy.

A Typer command declares one parameter per option, so this function's long signature is the command's option
list; its body only builds the request (:mod:`rkd.api`), runs it and renders the result."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from rkd.cli._common import console, handle_errors, human_size, out

WORST_LAYERS = 10


class Scheme(str, Enum):
    """Quantization scheme: cpu = uint8 asymmetric activations (fast on x86 ONNX Runtime); trt = symmetric
    int8 activations and weights (TensorRT explicit quantization)."""

    cpu = "cpu"
    trt = "trt"


class Method(str, Enum):
    """Calibration method (ONNX Runtime's calibrators)."""

    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


def _acc(block: dict[str, Any] | None) -> str:
    if not block:
        return "-"
    lo, hi = block["ci95"]
    return f"{block['acc']:.1%} ({block['correct']}/{block['n']}; 95% CI {lo:.1%}-{hi:.1%})"


def _agree(block: dict[str, Any] | None) -> str:
    if not block:
        return "-"
    return (f"{block['top1_agreement']:.2%} ({block['n'] - block['top1_disagreements']}/{block['n']}), "
            f"max |logit diff| {block['max_abs_diff']:.3g}")


def _render(section: dict[str, Any], bundle: Path) -> None:
    settings, calib = section["settings"], section["calibration"]
    synthetic = " (synthetic)" if calib["synthetic"] else ""
    symmetry = "symmetric" if settings["activation_symmetric"] else "asymmetric"
    out.print(f"INT8 {section['profile']} scheme: {settings['activation_type']} activations ({symmetry}), "
              f"int8 per-channel weights, {settings['calibration_method']} calibration on {calib['n']} "
              f"{calib['dataset']}{synthetic} training images (seed {calib['seed']}); "
              f"logits {settings['logits']}", highlight=False)
    ev = section.get("evaluation")
    if ev:
        tm = ev["threat_model"]
        attack = tm["attack"]
        title = f"float vs INT8 on {ev['data']['dataset']} test, first n={ev['data']['n']}"
        if attack:
            title += (f"; {attack.upper()} L-inf eps {tm['eps'] * 255:.3g}/255, "
                      f"step {tm['alpha'] * 255:.3g}/255, seed {tm['seed']}")
        table = Table(title=title)
        table.add_column("")
        table.add_column("float (torch)")
        table.add_column("INT8 (ONNX Runtime)")
        table.add_row("clean", _acc(ev["float"]["clean"]), _acc(ev["int8"]["clean"]))
        if attack:
            table.add_row(attack, _acc(ev["float"].get(attack)), _acc(ev["int8"].get(attack)))
        out.print(table)
        agree = Table(title="surrogate vs INT8 (ONNX Runtime) top-1 agreement", show_header=False)
        agree.add_row("clean", _agree(ev["agreement"]["clean"]))
        if attack:
            agree.add_row(f"{attack} (INT8's own adversarial inputs)", _agree(ev["agreement"].get(attack)))
        agree.add_row("float vs INT8 (clean)", f"{ev['float_int8_top1_agreement']:.2%}")
        out.print(agree)
        if attack:
            out.print("INT8 attacked with ONNX Runtime forward + surrogate gradient (straight-through)",
                      highlight=False)
    else:
        sur = section["surrogate"]
        out.print(f"surrogate agreement on {sur['agreement_on']}: {_agree(sur['agreement'])}",
                  highlight=False)
    files = Table(title=f"bundle {bundle}")
    files.add_column("file")
    files.add_column("size", justify="right")
    for name, size in section["sizes"].items():
        files.add_row(name, human_size(int(size)))
    out.print(files)
    layers = section.get("debug_layers")
    if layers:
        worst = Table(title=f"{min(WORST_LAYERS, len(layers))} worst of {len(layers)} activations: SQNR of "
                      "the INT8 model's activation vs the float model's (lower = worse)")
        worst.add_column("producing node (for --exclude)", overflow="fold")
        worst.add_column("op")
        worst.add_column("SQNR dB", justify="right")
        for row in layers[:WORST_LAYERS]:
            worst.add_row(row["node"] or row["tensor"], row["op_type"], f"{row['sqnr_db']:.1f}")
        out.print(worst)
    q = section.get("qat")
    if q:
        out.print(f"QAT: {q['method']}, {q['epochs']} epoch(s), lr {q['lr']}, {q['train_n']} training images; "
                  f"{q['write_back']['changed']}/{q['write_back']['initializers']} weight tensors changed; "
                  f"PTQ kept as {q['started_from']}", highlight=False)
        if q.get("before") and q.get("after"):
            table = Table(title="INT8 (ONNX Runtime): PTQ vs QAT")
            table.add_column("")
            table.add_column("PTQ")
            table.add_column("QAT")
            for key in q["after"]["int8"]:
                table.add_row(key, _acc(q["before"]["int8"].get(key)), _acc(q["after"]["int8"].get(key)))
            out.print(table)
    for warning in section.get("warnings") or []:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    out.print(f"manifest: {bundle / 'manifest.json'} (section \"quantize\")", highlight=False)


def quantize(
    checkpoint: Annotated[Path, typer.Argument(metavar="CHECKPOINT",
                                               help="rkd checkpoint (.safetensors with its .json sidecar).",
                                               show_default=False)],
    calib_data: Annotated[Optional[str], typer.Option(
        "--calib-data", help="Calibration images (training split): cifar10, cifar100, npz:PATH, "
        "imagefolder:PATH; synthetic only for models trained on it \\[default: the data set the checkpoint was "
        "trained on, else cifar10].", show_default=False)] = None,
    calib_n: Annotated[int, typer.Option("--calib-n", help="Number of calibration images (seeded random "
                                         "subset of the training split).")] = 512,
    scheme: Annotated[Scheme, typer.Option("--scheme", help="Quantization scheme: cpu = uint8 asymmetric "
                                           "activations (fast x86 ONNX Runtime); trt = symmetric int8 for "
                                           "TensorRT.")] = Scheme.cpu,
    method: Annotated[Method, typer.Option(
        help="Calibration: minmax (observed range), entropy (KL threshold, 2048-bin histogram), percentile "
             "(99.999th).")] = Method.minmax,
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out", help="Bundle directory (exported first when missing) \\[default: CHECKPOINT's "
        "folder/bundle].")] = None,
    data_root: Annotated[Optional[str], typer.Option("--data-root", help="Download/cache folder \\[default: "
                                                     "$RKD_DATA_ROOT, else ~/.cache/rkd/data].")] = None,
    eval_n: Annotated[int, typer.Option("--eval-n", help="Test images (the first n) for float vs INT8 "
                                        "accuracy; 0 skips.")] = 1000,
    eval_attacks: Annotated[str, typer.Option("--eval-attacks", help="pgdK, or none for clean "
                                              "only.")] = "pgd20",
    debug_layers: Annotated[bool, typer.Option("--debug-layers", help="Report the per-layer activation error "
                                               "(ONNX Runtime qdq_loss_debug), worst first.")] = False,
    exclude: Annotated[Optional[list[str]], typer.Option(
        "--exclude", help="ONNX node to keep in float (repeatable; names from --debug-layers).")] = None,
    seed: Annotated[int, typer.Option(help="Seeds the calibration subset and PGD starts.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing INT8 model, or re-export a "
                                        "bundle of another checkpoint.")] = False,
    qat: Annotated[bool, typer.Option("--qat", help="Robust quantization-aware training after PTQ: fine-tune "
                                      "the fake-quant student (the QDQ file's scales fixed) with --qat-method, then "
                                      "write the weights back as model.int8.onnx (PTQ kept as "
                                      "model.int8.ptq.onnx).")] = False,
    epochs: Annotated[int, typer.Option("--epochs", help="QAT epochs.")] = 1,
    qat_method: Annotated[str, typer.Option("--qat-method", help="QAT distillation method from the registry "
                                            "(adv_path, ard, rslad, ..., or teacher-free pgd_at, "
                                            "trades).")] = "adv_path",
    teacher: Annotated[Optional[Path], typer.Option("--teacher", help="Teacher checkpoint, required for QAT "
                                                    "methods that distil.")] = None,
    train_n: Annotated[Optional[int], typer.Option("--train-n", help="QAT training images: seeded random "
                                                   "subset of --calib-data's training split \\[default: "
                                                   "all].")] = None,
    qat_lr: Annotated[float, typer.Option("--qat-lr", help="QAT learning rate (SGD, constant).")] = 0.01,
    qat_steps: Annotated[Optional[int], typer.Option("--qat-steps", help="Attack steps of the QAT method "
                                                     "\\[default: the method's].")] = None,
    device: Annotated[str, typer.Option("--device", help="QAT device: auto, cpu, cuda[:N].")] = "auto",
    profile: Annotated[Optional[Scheme], typer.Option("--profile", hidden=True,
                                                      help="Deprecated name of --scheme.")] = None,
) -> None:
    """Quantize a checkpoint to INT8 (ONNX Runtime static QDQ, calibrated on real training images) into its
    bundle, with a fake-quant surrogate for gradients, and compare float vs INT8 clean and PGD-20 accuracy."""
    with handle_errors():
        from rkd import api

        if profile is not None:
            if scheme is not Scheme.cpu and scheme is not profile:
                from rkd.errors import UsageError

                raise UsageError(f"--profile {profile.value} and --scheme {scheme.value}: give only --scheme")
            console.print(f"[yellow]warning:[/] rkd quantize --profile is deprecated: use --scheme {profile.value} "
                          "(--profile names an export profile in rkd verify)", highlight=False)
            scheme = profile
        result = api.quantize(
            checkpoint, calib_data=calib_data, calib_n=calib_n, scheme=scheme.value, method=method.value,
            out=out_dir, data_root=data_root, eval_n=eval_n, eval_attacks=eval_attacks, debug_layers=debug_layers,
            exclude=exclude, seed=seed, force=force, qat=qat, epochs=epochs, qat_method=qat_method,
            teacher=teacher, train_n=train_n, qat_lr=qat_lr, qat_steps=qat_steps, device=device,
        )
        _render(result.section, result.bundle)
