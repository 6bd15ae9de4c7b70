"""The output folder of a training run (``rkd teacher``, ``rkd distill``), checked before anything is written."""

from __future__ import annotations

from pathlib import Path

from rkd.errors import CheckpointError, UsageError
from rkd.train.loop import BEST_CHECKPOINT, FINAL_CHECKPOINT, STATE_FILE

METRICS_FILE = "metrics.jsonl"
RESOLVED_RECIPE = "recipe.resolved.yaml"
#: Every file a training run writes into its folder (besides its ``.lock``), checkpoints first.
RUN_FILES = (FINAL_CHECKPOINT, "model.json", BEST_CHECKPOINT, "best.json", STATE_FILE, METRICS_FILE, RESOLVED_RECIPE)
_CHECKPOINTS = (FINAL_CHECKPOINT, "model.json", BEST_CHECKPOINT, "best.json")


def state_fingerprint(path: Path) -> str | None:
    """The recipe fingerprint a ``train_state.pt`` was written with (None when the file does not record one).

    Raises:
        CheckpointError: the file cannot be read as a training state.
    """
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read means the file is unusable
        raise CheckpointError(f"{path}: cannot read the training state ({exc.__class__.__name__}); "
                              "delete it to start the run over") from None
    fp = payload.get("fingerprint") if isinstance(payload, dict) else None
    return fp if isinstance(fp, str) else None


def check_run_dir(run_dir: str | Path, *, resume: bool, fingerprint: str) -> None:
    """Refuse, before anything is written, a run folder whose files this run would overwrite or append to.

    Without ``resume`` the folder must hold none of :data:`RUN_FILES` (they belong to another run). With
    ``resume`` its ``train_state.pt`` must come from the same recipe (``fingerprint``); a folder without one
    may hold only what a run killed before its first checkpoint leaves (metrics, the resolved recipe), never a
    checkpoint. Files of other names are never touched, so they do not count.

    Raises:
        UsageError: the folder holds another run's files. CheckpointError: a state of another recipe.
    """
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise UsageError(f"--out '{run}' is a file; give a folder")
    present = [name for name in RUN_FILES if (run / name).exists()]
    if not present:
        return
    state = run / STATE_FILE
    if resume and state.is_file():
        if state_fingerprint(state) != fingerprint:
            raise CheckpointError(f"{state}: this run was started with a different recipe; resume with the same "
                                  "recipe, or choose another --out to start a new run")
        return
    checkpoints = ", ".join(name for name in present if name in _CHECKPOINTS)
    if not resume and STATE_FILE in present:
        raise UsageError(f"'{run}' already holds a run ({', '.join(present)}): pass --resume to continue it, or "
                         "choose another --out")
    if checkpoints:
        without = "" if not resume else f" and no {STATE_FILE} to resume from"
        raise UsageError(f"'{run}' already holds a checkpoint ({checkpoints}){without}: a new run never overwrites "
                         "a model; choose another --out")
    if not resume:
        raise UsageError(f"'{run}' already holds another run's files ({', '.join(present)}): a new run never "
                         "overwrites or appends to them; choose another --out, or pass --resume to continue that run")
