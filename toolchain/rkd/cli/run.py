"""Run a whole recipe: teacher, distill, export, quantize, engine, verify; unchanged stages are skipped."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from rkd.cli._common import RichProgress, console, handle_errors, out


def _metrics(metrics: dict) -> str:
    parts = []
    for key, value in metrics.items():
        if key == "gates":
            parts += [f"{g} {'pass' if ok else 'FAIL'}" for g, ok in value.items()]
        elif isinstance(value, float):
            parts.append(f"{key} {value:.3g}")
        elif value is not None:
            parts.append(f"{key} {value}")
    return ", ".join(parts)


def run(
    recipe: Annotated[Path, typer.Argument(metavar="RECIPE", help="Recipe YAML (teacher, student, deploy, verify "
                                           "sections), or a shipped recipe's name (quickstart, smoke).",
                                           show_default=False)],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe key: "
                                                      "--set student.train.epochs=1.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run directory \\[default: runs/<recipe name>].")]
        = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted stage from its last checkpoint.")]
        = False,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N \\[default: the recipe's].")] = None,
    data_root: Annotated[Optional[str], typer.Option("--data-root", help="Where data sets are downloaded or found "
                                                     "\\[default: data.root, else $RKD_DATA_ROOT, else "
                                                     "~/.cache/rkd/data].")]
        = None,
) -> None:
    """Run a whole recipe: teacher, distill, export, quantize, engine, verify; unchanged stages are skipped.

    Exit code: verify's (0 every gate passed, 1 a gate failed, 5 an unreliable evaluation), else 2 usage/recipe
    error, 3 backend missing, 4 internal error.
    """
    with handle_errors():
        from rkd import api

        outcome = api.run(recipe, overrides=set_, out=out_dir, resume=resume, device=device, data_root=data_root,
                          progress=RichProgress, log=lambda m: console.print(m, highlight=False))
        result = outcome.result
        table = Table(title=f"rkd run {outcome.recipe.name}: {result.run_dir}")
        for col in ("stage", "status", "time", "artifact", "metrics"):
            table.add_column(col, justify="right" if col == "time" else "left", overflow="fold")
        for st in result.stages:
            table.add_row(st.name, st.status, f"{st.seconds:.1f} s", st.artifact or "-", _metrics(st.metrics))
        out.print(table)
        if result.report is not None:
            rep = result.report
            verdict = ("[bold green]PASS[/]" if rep.get("passed") else "[bold red]UNRELIABLE[/]"
                       if rep.get("verdict") == "unreliable" else "[bold red]FAIL[/]")
            out.print(f"{verdict}  clean {rep['clean_acc']:.1%}, worst-case robust {rep['robust_acc']:.1%} "
                      f"(n={rep['n']}, {rep['norm']} eps={rep['eps_text']}); report: {result.run_dir / 'verify'}",
                      highlight=False)
        raise typer.Exit(result.exit_code)
