"""Distil a robust teacher into a student (adv_path by default; ard, iad, rslad, adaad, pgd_at, trades)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rkd.cli._common import RichProgress, handle_errors, render_train_result


def distill(
    recipe: Annotated[Path, typer.Argument(metavar="RECIPE", help="Recipe YAML with a 'student' section, or a "
                                           "shipped recipe's name.", show_default=False)],
    teacher: Annotated[
        Optional[Path], typer.Option(help="Teacher checkpoint \\[default: teacher.checkpoint, or the recipe's "
                                     "own teacher run].")
    ] = None,
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="Override a recipe key: --set student.train.epochs=1.")
    ] = None,
    out_dir: Annotated[
        Optional[Path], typer.Option("--out", help="Run directory \\[default: runs/<recipe name>/student].")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed run from its last checkpoint.")] = False,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N \\[default: the recipe's].")] = None,
    data_root: Annotated[
        Optional[str], typer.Option("--data-root", help="Where data sets are downloaded or found \\[default: "
                                    "data.root, else $RKD_DATA_ROOT, else ~/.cache/rkd/data].")
    ] = None,
) -> None:
    """Distil a robust teacher into a student (adv_path by default; ard, iad, rslad, adaad, pgd_at, trades).

    Scales out with torchrun: torchrun --nproc_per_node=N -m rkd distill RECIPE.yaml (the recipe's batch size
    stays the global batch).
    """
    with handle_errors():
        from rkd import api
        from rkd.train.distributed import current_context

        res = api.distill(recipe, teacher=teacher, overrides=set_, out=out_dir, resume=resume, device=device,
                          data_root=data_root, progress=RichProgress())
        if not current_context().is_main:
            return
        assert res.recipe.student is not None
        render_train_result(f"student '{res.recipe.name}' ({res.recipe.student.method.name})", res.result)
