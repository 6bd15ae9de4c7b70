"""Adversarially train a robust teacher (PGD-AT or TRADES) from a recipe; writes a safetensors checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

from rkd.cli._common import RichProgress, handle_errors, render_train_result
from rkd.cli._recipe import DataRoot, Device, Resume, out_option, recipe_argument, set_option


def teacher(
    recipe: Annotated[Path, recipe_argument("teacher")],
    set_: Annotated[Optional[list[str]], set_option("teacher")] = None,
    out_dir: Annotated[Optional[Path], out_option("teacher")] = None,
    resume: Resume = False,
    device: Device = None,
    data_root: DataRoot = None,
) -> None:
    """Adversarially train a robust teacher (PGD-AT or TRADES) from a recipe; writes a safetensors checkpoint."""
    with handle_errors():
        from rkd import api

        result = api.teacher(recipe, overrides=set_, out=out_dir, resume=resume, device=device, data_root=data_root,
                             progress=RichProgress())
        render_train_result(f"teacher '{result.recipe.name}'", result.result)
