"""``rkd distill``: distil a robust teacher into a student with a registered method (adv_path by default)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from rkd.atomic import atomic_write_text
from rkd.config import Recipe, dump_recipe, resolve_device
from rkd.distill import METHODS, create_method
from rkd.errors import CheckpointError, RecipeError
from rkd.seeding import seed_everything
from rkd.train.build import build_model, fingerprint, load_training_data
from rkd.train.distributed import init_distributed
from rkd.train.loop import TrainResult, fit
from rkd.train.progress import ProgressSink
from rkd.train.rundir import check_run_dir


def resolve_teacher_path(recipe: Recipe, teacher: str | Path | None) -> Path | None:
    """The teacher checkpoint: ``--teacher``, else ``teacher.checkpoint``, else the recipe's own teacher run."""
    if teacher is not None:
        return Path(teacher)
    if recipe.teacher is not None and recipe.teacher.checkpoint:
        return Path(recipe.teacher.checkpoint)
    own = Path("runs") / recipe.name / "teacher" / "model.safetensors"
    return own if own.exists() else None


def load_teacher(path: Path, recipe: Recipe, num_classes: int) -> nn.Module:
    """Load an rkd checkpoint, or a foreign state_dict described by the recipe's ``teacher.model``."""
    from rkd.models import load_checkpoint, load_foreign_checkpoint

    if path.suffix == ".safetensors" and path.with_suffix(".json").exists():
        model, _ = load_checkpoint(path)
    else:
        if recipe.teacher is None:
            raise RecipeError(f"{path} is not an rkd checkpoint: describe it in the recipe's teacher.model")
        m = recipe.teacher.model
        model = load_foreign_checkpoint(path, model=m.name, num_classes=num_classes, width=m.width,
                                        depth=m.depth, widen_factor=m.widen_factor)
    if model.spec.num_classes != num_classes:
        raise CheckpointError(
            f"the teacher {path} has {model.spec.num_classes} classes but the data has {num_classes}"
        )
    return model


def distill_student(
    recipe: Recipe,
    *,
    run_dir: str | Path,
    teacher: str | Path | None = None,
    resume: bool = False,
    device: str | None = None,
    data_root: str | None = None,
    progress: ProgressSink | None = None,
) -> TrainResult:
    """Train the recipe's student with ``student.method`` from the teacher; write ``run_dir/model.safetensors``.

    Under ``torchrun`` (WORLD_SIZE > 1) this runs DistributedDataParallel with the recipe's batch size as the
    global batch; rank 0 writes every file.
    """
    if recipe.student is None:
        raise RecipeError("the recipe has no 'student' section: add student.model and student.method")
    scfg = recipe.student
    ctx, dev = init_distributed(resolve_device(device or recipe.device))
    teacher_path = resolve_teacher_path(recipe, teacher)
    uses_teacher = METHODS.get(scfg.method.name).needs_teacher and teacher_path is not None
    fp = fingerprint(recipe.data, scfg, recipe.seed, str(teacher_path) if uses_teacher else None)
    check_run_dir(run_dir, resume=resume, fingerprint=fp)  # on every rank, before rank 0 writes anything
    ctx.barrier()
    seed_everything(recipe.seed)
    data = load_training_data(recipe.data, seed=recipe.seed, root=data_root)
    student = build_model(scfg.model, data.num_classes)
    teacher_model = None
    if METHODS.get(scfg.method.name).needs_teacher:
        if teacher_path is None:
            raise RecipeError(
                f"method '{scfg.method.name}' needs a teacher: pass --teacher CHECKPOINT, set teacher.checkpoint, "
                f"or train one first with `rkd teacher`"
            )
        if not teacher_path.exists():
            raise CheckpointError(f"{teacher_path}: teacher checkpoint not found")
        teacher_model = load_teacher(teacher_path, recipe, data.num_classes)
    method = create_method(scfg.method, student=student, teacher=teacher_model)
    run = Path(run_dir)
    if ctx.is_main:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run / "recipe.resolved.yaml", dump_recipe(recipe))
    meta: dict[str, Any] = {
        "stage": "distill", "recipe": recipe.name, "recipe_fingerprint": fp,
        "method": scfg.method.model_dump(), "teacher": str(teacher_path) if teacher_model is not None else None,
        "data": {"dataset": recipe.data.dataset, "options": recipe.data.options(), "train_n": len(data.train),
                 "classes": data.classes, **({"transforms": data.transforms} if data.transforms else {})},
        "threat": recipe.threat.model_dump(), "world_size": ctx.world_size,
    }
    return fit(
        method, data.train, data.holdout, scfg.train, run_dir=run, device=dev, batch_size=recipe.data.batch_size,
        threat=recipe.threat, fingerprint=fp, augment=recipe.data.augment, seed=recipe.seed, resume=resume,
        metadata=meta, progress=progress,
    )
