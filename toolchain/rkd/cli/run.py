"""Run a whole recipe: teacher, distill, export, quantize, engine, verify; unchanged stages are skipped."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rkd.cli._common import RichProgress, check_output_path, console, handle_errors, out


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
        from rkd.config import load_recipe
        from rkd.pipeline import Pipeline
        from rkd.pipeline.render import run_table, verdict_text

        rec = load_recipe(recipe, set_ or [])
        check_output_path(out_dir, "--out", folder=True)
        pipe = Pipeline(rec, run_dir=out_dir, data_root=data_root, device=device, resume=resume,
                        progress=RichProgress, log=lambda m: console.print(m, highlight=False))
        result = pipe.run()
        out.print(run_table(result, rec.name))
        verdict = verdict_text(result)
        if verdict is not None:
            out.print(verdict, highlight=False)
        raise typer.Exit(result.exit_code)
