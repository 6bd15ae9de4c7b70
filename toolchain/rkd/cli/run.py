"""Run a whole recipe: teacher, distill, export, quantize, engine, verify; unchanged stages are skipped."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rkd.cli._common import RichProgress, console, handle_errors, out
from rkd.cli._recipe import DataRoot, Device, set_option


def run(
    recipe: Annotated[Path, typer.Argument(metavar="RECIPE", help="Recipe YAML (teacher, student, deploy, verify "
                                           "sections), or a shipped recipe's name (quickstart, smoke).",
                                           show_default=False)],
    set_: Annotated[Optional[list[str]], set_option("student")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run directory \\[default: runs/<recipe name>].")]
        = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted stage from its last checkpoint.")]
        = False,
    device: Device = None,
    data_root: DataRoot = None,
) -> None:
    """Run a whole recipe: teacher, distill, export, quantize, engine, verify; unchanged stages are skipped.

    Exit code: verify's (0 every gate passed, 1 a gate failed, 5 an unreliable evaluation), else 2 usage/recipe
    error, 3 backend missing, 4 internal error.
    """
    with handle_errors():
        from rkd import api
        from rkd.pipeline.render import run_table, verdict_text

        outcome = api.run(recipe, overrides=set_, out=out_dir, resume=resume, device=device, data_root=data_root,
                          progress=RichProgress, log=lambda m: console.print(m, highlight=False))
        result = outcome.result
        out.print(run_table(result, outcome.recipe.name))
        verdict = verdict_text(result)
        if verdict is not None:
            out.print(verdict, highlight=False)
        raise typer.Exit(result.exit_code)
