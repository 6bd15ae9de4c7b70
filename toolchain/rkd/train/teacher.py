"""``rkd teacher``: adversarially train a robust teacher (PGD-AT or TRADES) from a recipe."""

from __future__ import annotations

from pathlib import Path

from rkd.atomic import atomic_write_text
from rkd.config import Recipe, dump_recipe, resolve_device
from rkd.distill import create_method
from rkd.errors import RecipeError
from rkd.seeding import seed_everything
from rkd.train.build import build_model, fingerprint, load_training_data
from rkd.train.loop import TrainResult, fit
from rkd.train.progress import ProgressSink
from rkd.train.rundir import check_run_dir


def train_teacher(
    recipe: Recipe,
    *,
    run_dir: str | Path,
    resume: bool = False,
    device: str | None = None,
    data_root: str | None = None,
    progress: ProgressSink | None = None,
) -> TrainResult:
    """Train the recipe's teacher with its method (``teacher.method``) and write ``run_dir/model.safetensors``."""
    if recipe.teacher is None:
        raise RecipeError("the recipe has no 'teacher' section: add teacher.model and teacher.method")
    tcfg = recipe.teacher
    if tcfg.checkpoint:
        raise RecipeError(
            f"the recipe loads its teacher from teacher.checkpoint ({tcfg.checkpoint}): nothing to train; "
            "remove teacher.checkpoint (or --set teacher.checkpoint=null) to train one"
        )
    fp = fingerprint(recipe.data, tcfg, recipe.seed)
    check_run_dir(run_dir, resume=resume, fingerprint=fp)  # before anything is written
    dev = resolve_device(device or recipe.device)
    seed_everything(recipe.seed)
    data = load_training_data(recipe.data, seed=recipe.seed, root=data_root)
    model = build_model(tcfg.model, data.num_classes)
    method = create_method(tcfg.method, student=model)
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run / "recipe.resolved.yaml", dump_recipe(recipe))
    meta = {
        "stage": "teacher", "recipe": recipe.name, "recipe_fingerprint": fp, "method": tcfg.method.model_dump(),
        "data": {"dataset": recipe.data.dataset, "options": recipe.data.options(), "train_n": len(data.train),
                 "classes": data.classes, **({"transforms": data.transforms} if data.transforms else {})},
        "threat": recipe.threat.model_dump(),
    }
    return fit(
        method, data.train, data.holdout, tcfg.train, run_dir=run, device=dev, batch_size=recipe.data.batch_size,
        threat=recipe.threat, fingerprint=fp, augment=recipe.data.augment, seed=recipe.seed, resume=resume,
        metadata=meta, progress=progress,
    )
