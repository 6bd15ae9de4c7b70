"""Verify the adversarial robustness of an exported engine (ONNX Runtime, TensorRT or torch) against gates.

A Typer command declares one parameter per option, so this function's long signature is the command's option
list; its body only builds the request (:mod:`rkd.api`), runs it and renders the result."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from rkd.cli._common import class_table, console, handle_errors, out
from rkd.cli.choices import Channels, Layout, Norm, Sample


def _value(choice: Enum | None) -> str | None:
    return None if choice is None else str(choice.value)


def render_report(rep: dict, paths: dict, *, by_class: bool = False) -> None:
    """The Rich summary of a verify report: per-attack engine vs float, worst case, agreement, gates (and the
    engine's accuracy per class with ``by_class``)."""
    art = rep["artifact"]
    table = Table(title=f"{Path(art['file']).name} ({art['kind']}): {rep['data']['dataset']}, n={rep['n']}, "
                        f"{rep['norm']} eps={rep['eps_text']}, seed={rep['seed']}")
    for col in ("attack", "engine", "95% CI", "float", "drop", "time"):
        table.add_column(col, justify="left" if col == "attack" else "right")
    ref = (rep.get("float") or {}).get("attacks") or {}
    for name, res in rep["attacks"].items():
        f = ref.get(name)
        table.add_row(name, f"{res['acc']:.1%}", f"{res['ci95'][0]:.1%}-{res['ci95'][1]:.1%}",
                      f"{f['acc']:.1%}" if f else "-", f"{(f['acc'] - res['acc']) * 100:+.1f}" if f else "-",
                      f"{res['seconds']:.1f} s")
    wc, fwc = rep["worst_case"], (rep.get("float") or {}).get("worst_case")
    table.add_row("[bold]worst case[/]", f"[bold]{wc['acc']:.1%}", f"{wc['ci95'][0]:.1%}-{wc['ci95'][1]:.1%}",
                  f"{fwc['acc']:.1%}" if fwc else "-", f"{(fwc['acc'] - wc['acc']) * 100:+.1f}" if fwc else "-",
                  f"{rep['timing']['total_s']:.1f} s")
    out.print(table)
    if by_class and rep.get("by_class"):
        out.print(class_table(rep["by_class"], title="engine accuracy per class (true label)"))
    agree = ", ".join(f"{k} {v['top1_agreement']:.1%} (n={v['n']})" for k, v in rep["agreement"].items() if v)
    out.print(f"engine/surrogate agreement: {agree or '-'}", highlight=False)
    for w in rep["warnings"]:
        out.print(f"[yellow]warning:[/] {w}", highlight=False)
    for g in rep["gates"]:
        mark = "[green]pass[/]" if g["passed"] else "[bold red]FAIL[/]"
        out.print(f"{mark} {g['gate']}  ({g['message']}; {g['source']})", highlight=False)
    for note in ((rep.get("floor") or {}).get("note"), (rep.get("reliability") or {}).get("note")):
        if note:
            out.print(f"[yellow]note:[/] {note}", highlight=False)
    white_box = rep.get("white_box") or {}
    if white_box and not white_box.get("ran"):
        out.print(f"[yellow]note:[/] no white-box attack ran ({white_box.get('why_not')})", highlight=False)
    for reason in (rep.get("reliability") or {}).get("unreliable") or []:
        out.print(f"[bold red]unreliable:[/] {reason}", highlight=False)
    verdict = {"pass": "[bold green]PASS[/]", "fail": "[bold red]FAIL[/]", "unreliable": "[bold red]UNRELIABLE[/]",
               "no gates": "[bold]MEASURED[/] (no gates)"}[rep["verdict"]]
    out.print(f"{verdict}  report: {paths['json']}  junit: {paths['junit']}", highlight=False)


def verify(
    engine: Annotated[Path, typer.Option("--engine", help="The artifact: .onnx (ONNX Runtime), .engine/.plan "
                                         "(TensorRT), .safetensors (torch), or a bundle folder.",
                                         show_default=False)],
    data: Annotated[Optional[str], typer.Option(help="cifar10, cifar100, synthetic, npz:PATH or imagefolder:PATH "
                                                "\\[default: the data set the bundle's manifest (or the checkpoint) "
                                                "records, else cifar10].", show_default=False)] = None,
    data_root: Annotated[Optional[str], typer.Option("--data-root", help="Download/cache folder \\[default: "
                                                     "$RKD_DATA_ROOT, else ~/.cache/rkd/data].")] = None,
    split: Annotated[str, typer.Option(help="Data split.")] = "test",
    n: Annotated[Optional[int], typer.Option(help="Samples \\[default: the profile's, else 1000].")] = None,
    sample: Annotated[Optional[Sample], typer.Option(help="The first n samples, or a seeded random subset "
                                                     "\\[default: the profile's, else first].")] = None,
    attacks: Annotated[Optional[str], typer.Option(help="Comma-separated: fgsm, pgdK, pgdKrR, cw[K], autoattack, "
                                                   "square, aa-custom:A+B \\[default: profile's, else "
                                                   "pgd20,autoattack].")] = None,
    eps: Annotated[Optional[str], typer.Option(help="Radius on [0,1] inputs, e.g. 8/255 \\[default: profile's, "
                                               "else the bundle's threat model].")] = None,
    norm: Annotated[Optional[Norm], typer.Option(help="Threat model \\[default: the bundle's, else linf].")] = None,
    alpha: Annotated[str, typer.Option(help="PGD/CW step size.")] = "2/255",
    seed: Annotated[int, typer.Option(help="Seeds random starts, AutoAttack and the random sample.")] = 0,
    gate: Annotated[Optional[list[str]], typer.Option("--gate", help="A gate, e.g. 'robust_acc>=0.40', "
                                                      "'drop.robust_acc<=0.03' (repeatable).")] = None,
    profile: Annotated[Optional[str], typer.Option(help="Export profile (a name: ./export/NAME.yaml, else the "
                                                   "one shipped with rkd; or a YAML path): its n, attacks, eps and "
                                                   "gates.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a key of --profile: --set "
                                                      "verify.n=500 (repeatable).")] = None,
    fail_on_warnings: Annotated[Optional[bool], typer.Option("--fail-on-warnings/--no-fail-on-warnings",
                                                             help="Whether a warning fails the run.")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Report folder \\[default: "
                                                   "verify-<artifact stem>].")] = None,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="JUnit XML path \\[default: in --report].")] = None,
    curve: Annotated[bool, typer.Option("--curve", help="Also plot accuracy against eps (PNG).")] = False,
    curve_eps: Annotated[str, typer.Option("--curve-eps", help="The eps values of --curve.")] =
        "0,2/255,4/255,8/255,12/255,16/255",
    state: Annotated[Optional[Path], typer.Option("--state", help="State folder: a killed run continues "
                                                  "where it stopped.")] = None,
    surrogate: Annotated[Optional[Path], typer.Option(help="Gradient source instead of the bundle's (rkd "
                                                      "checkpoint or ONNX file).")] = None,
    reference: Annotated[Optional[Path], typer.Option(help="Float reference instead of the bundle's model.onnx.")]
        = None,
    transfer: Annotated[Optional[bool], typer.Option("--transfer/--no-transfer", help="Attack with the float "
                                                     "reference's adversarial examples too \\[default: the "
                                                     "profile's, else on].", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per engine call.")] = 256,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N for the surrogate and ONNX Runtime's provider; "
                                        "auto = cuda for TensorRT engines, cpu otherwise.")] = "auto",
    by_class: Annotated[bool, typer.Option("--by-class", help="Also print the engine's accuracy per class (always "
                                           "in the reports).")] = False,
    no_gates: Annotated[bool, typer.Option("--no-gates", help="Measure without a verdict (exit 0 whatever the "
                                           "numbers); without it a run with no gate is a usage error.")] = False,
    mean: Annotated[Optional[str], typer.Option(help="A model rkd did not make: the mean it subtracts, three "
                                                "numbers in its channel order and pixel scale, or 'imagenet'.",
                                                rich_help_panel="Models rkd did not make")] = None,
    std: Annotated[Optional[str], typer.Option(help="The std it divides by (three numbers, or 'imagenet').",
                                               rich_help_panel="Models rkd did not make")] = None,
    pixel_scale: Annotated[Optional[float], typer.Option("--pixel-scale", help="Its pixel range: 1 for [0, 1], 255 "
                                                         "for [0, 255] \\[default: 1].",
                                                         rich_help_panel="Models rkd did not make")] = None,
    layout: Annotated[Optional[Layout], typer.Option(help="Its input layout \\[default: nchw].",
                                                     rich_help_panel="Models rkd did not make")] = None,
    channels: Annotated[Optional[Channels], typer.Option(help="Its channel order \\[default: rgb].",
                                                         rich_help_panel="Models rkd did not make")] = None,
    input_size: Annotated[Optional[int], typer.Option("--input-size", min=1, help="Decode an image folder at this "
                                                      "side (resize + center crop) \\[default: the model's declared "
                                                      "input].", rich_help_panel="Models rkd did not make")] = None,
    label_map: Annotated[Optional[Path], typer.Option("--label-map", help="JSON mapping each class of the data to "
                                                      "the model output that scores it (e.g. an ImageNet model on a "
                                                      "10-class folder).", rich_help_panel="Models rkd did not make")]
        = None,
    reference_model: Annotated[Optional[str], typer.Option("--reference-model", help="--reference is a plain "
                                                           "state_dict of this architecture: an rkd name (e.g. "
                                                           "tv_mobilenet_v2), timm:NAME or torchvision:NAME (built "
                                                           "without download), each optionally :CLASSES.",
                                                           rich_help_panel="Models rkd did not make")] = None,
    allow_no_floor: Annotated[bool, typer.Option("--allow-no-floor", help="Judge gates without a floor on robust "
                                                 "accuracy (e.g. only drops and agreement, which a model without "
                                                 "robustness passes; the report says so); without it such a gate "
                                                 "set is a usage error.")] = False,
) -> None:
    """Verify the adversarial robustness of an exported engine (ONNX Runtime, TensorRT or torch) against gates.

    Exit codes: 0 every gate passed, 1 a gate failed, 2 usage error, 3 backend or hardware missing, 4 internal
    error, 5 unreliable: the gates passed but the gradient attacks could not be trusted (zero gradients or low
    engine/surrogate agreement) and no gradient-free attack ran.
    """
    with handle_errors():
        from rkd import api

        res = api.verify(
            engine, data=data, data_root=data_root, split=split, n=n, sample=_value(sample), attacks=attacks, eps=eps,
            norm=_value(norm), alpha=alpha, seed=seed, gate=gate, profile=profile, overrides=set_,
            fail_on_warnings=fail_on_warnings, report=report, junit=junit, curve=curve, curve_eps=curve_eps,
            state=state, surrogate=surrogate, reference=reference, transfer=transfer, batch_size=batch_size,
            device=device, no_gates=no_gates, mean=mean, std=std, pixel_scale=pixel_scale, layout=_value(layout),
            channels=_value(channels), input_size=input_size, label_map=label_map, reference_model=reference_model,
            allow_no_floor=allow_no_floor, log=lambda m: console.print(m, highlight=False),
        )
        render_report(res.report, res.paths, by_class=by_class)
        if not res.passed:
            raise typer.Exit(res.exit_code)
