"""Distil a robust teacher into a student (adv_path by default; ard, iad, rslad, adaad, pgd_at, trades)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rkd.cli._common import RichProgress, handle_errors, render_train_result
from rkd.cli._recipe import DataRoot, Device, Resume, out_option, recipe_argument, set_option


def distill(
    recipe: Annotated[Path, recipe_argument("student")],
    teacher: Annotated[
        Optional[Path], typer.Option(help="Teacher checkpoint \\[default: teacher.checkpoint, or the recipe's "
                                     "own teacher run].")
    ] = None,
    set_: Annotated[Optional[list[str]], set_option("student")] = None,
    out_dir: Annotated[Optional[Path], out_option("student")] = None,
    resume: Resume = False,
    device: Device = None,
    data_root: DataRoot = None,
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
