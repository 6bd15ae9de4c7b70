"""Adversarially train a robust teacher (PGD-AT or TRADES) from a recipe; writes a safetensors checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rkd.cli._common import RichProgress, handle_errors, render_train_result


def teacher(
    recipe: Annotated[Path, typer.Argument(metavar="RECIPE", help="Recipe YAML with a 'teacher' section, or a "
                                           "shipped recipe's name.", show_default=False)],
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="Override a recipe key: --set teacher.train.epochs=1.")
    ] = None,
    out_dir: Annotated[
        Optional[Path], typer.Option("--out", help="Run directory \\[default: runs/<recipe name>/teacher].")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed run from its last checkpoint.")] = False,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N \\[default: the recipe's].")] = None,
    data_root: Annotated[
        Optional[str], typer.Option("--data-root", help="Where data sets are downloaded or found \\[default: "
                                    "data.root, else $RKD_DATA_ROOT, else ~/.cache/rkd/data].")
    ] = None,
) -> None:
    """Adversarially train a robust teacher (PGD-AT or TRADES) from a recipe; writes a safetensors checkpoint."""
    with handle_errors():
        from rkd import api

        result = api.teacher(recipe, overrides=set_, out=out_dir, resume=resume, device=device, data_root=data_root,
                             progress=RichProgress())
        render_train_result(f"teacher '{result.recipe.name}'", result.result)
