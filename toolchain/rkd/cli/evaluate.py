"""Evaluate a checkpoint's clean and adversarial accuracy (FGSM, PGD-k, CW-inf, AutoAttack) with intervals.

A Typer command declares one parameter per option, so this function's long signature is the command's option
list; its body only builds the request (:mod:`rkd.api`), runs it and renders the result."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from rkd.cli._common import class_table, console, handle_errors, out
from rkd.cli.choices import Norm, Sample


def eval_command(
    checkpoint: Annotated[Path, typer.Argument(metavar="CHECKPOINT",
                                               help="rkd checkpoint (.safetensors with its .json sidecar), "
                                               "or a plain state_dict with --model.", show_default=False)],
    data: Annotated[str, typer.Option(help="cifar10, cifar100, synthetic, npz:PATH or imagefolder:PATH.")] = "cifar10",
    data_root: Annotated[Optional[str], typer.Option("--data-root", help="Download/cache folder \\[default: "
                                                     "$RKD_DATA_ROOT, else ~/.cache/rkd/data].")] = None,
    split: Annotated[str, typer.Option(help="Data split.")] = "test",
    n: Annotated[int, typer.Option(help="Number of samples.")] = 1000,
    sample: Annotated[Sample, typer.Option(help="The first n samples, or a seeded random subset.")] = Sample.first,
    attacks: Annotated[str, typer.Option(help="Comma-separated: clean,fgsm,pgdK,cw[K],autoattack,"
                                         "aa-custom:A+B.")] = "clean,fgsm,pgd20,cw,autoattack",
    eps: Annotated[str, typer.Option(help="Attack radius on [0,1] inputs, e.g. 8/255.")] = "8/255",
    alpha: Annotated[str, typer.Option(help="PGD/CW step size.")] = "2/255",
    norm: Annotated[Norm, typer.Option(help="Threat-model norm.")] = Norm.linf,
    seed: Annotated[int, typer.Option(help="Seeds random starts and the random sample.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Attack batch size.")] = 256,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    report: Annotated[Optional[Path], typer.Option("--report", help="JSON report path "
                                                   "\\[default: CHECKPOINT's folder/<stem>.eval.json].")] = None,
    aa_state: Annotated[Optional[Path], typer.Option("--aa-state", help="AutoAttack state file (resumable).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Architecture of a foreign state_dict.")] = None,
    num_classes: Annotated[Optional[int],
                           typer.Option("--num-classes", help="Classes of a foreign state_dict.")] = None,
    width: Annotated[float, typer.Option(help="Width multiplier of a foreign state_dict.")] = 1.0,
    depth: Annotated[Optional[int], typer.Option(help="Depth (wide_resnet).")] = None,
    widen_factor: Annotated[Optional[int], typer.Option("--widen-factor", help="Widen factor (wide_resnet).")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Per-channel mean of a foreign model, e.g. 0,0,0.")] = None,
    std: Annotated[Optional[str], typer.Option(help="Per-channel std of a foreign model, e.g. 1,1,1.")] = None,
    by_class: Annotated[bool, typer.Option("--by-class", help="Also print accuracy per class under every attack "
                                           "(always in the report).")] = False,
) -> None:
    """Evaluate a checkpoint's clean and adversarial accuracy (FGSM, PGD-k, CW-inf, AutoAttack) with intervals."""
    with handle_errors():
        from rkd import api

        res = api.evaluate(
            checkpoint, data=data, data_root=data_root, split=split, n=n, sample=sample.value, attacks=attacks,
            eps=eps, alpha=alpha, norm=norm.value, seed=seed, batch_size=batch_size, device=device, report=report,
            aa_state=aa_state, model=model, num_classes=num_classes, width=width, depth=depth,
            widen_factor=widen_factor, mean=mean, std=std, log=lambda m: console.print(m, highlight=False),
        )
        rep = res.report
        table = Table(title=f"{checkpoint.name}: {rep['data']['dataset']} {split}, n={rep['n']}, {norm.value} "
                            f"eps={eps}, seed={seed}")
        for col in ("attack", "accuracy", "95% CI", "correct", "time"):
            table.add_column(col, justify="left" if col == "attack" else "right")
        for name, r in rep["attacks"].items():
            lo, hi = r["ci95"]
            table.add_row(name, f"{r['acc']:.2%}", f"{lo:.1%}-{hi:.1%}", f"{r['correct']}/{r['n']}",
                          f"{r['seconds']:.1f} s")
        wc = rep["worst_case"]
        table.add_row("[bold]worst case[/]", f"[bold]{wc['acc']:.2%}", f"{wc['ci95'][0]:.1%}-{wc['ci95'][1]:.1%}",
                      f"{wc['correct']}/{wc['n']}", f"{rep['timing']['total_s']:.1f} s")
        out.print(table)
        if by_class:
            out.print(class_table(rep["by_class"], title="accuracy per class (true label)"))
        out.print(f"samples sha256 {rep['data']['indices_sha256'][:16]}…  report: {res.path}", highlight=False)
        for warning in rep["warnings"]:
            out.print(f"[yellow]warning:[/] {warning}", highlight=False)
