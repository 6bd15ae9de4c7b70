"""The training loop, generic over :class:`~rkd.distill.DistillMethod`.

SGD with a step-exact schedule; channels_last; bf16 autocast on CUDA (``amp: bf16`` also on CPU); deterministic
seeding; metrics JSONL; periodic clean + PGD evaluation on held-out training images; atomic checkpoints;
``resume`` continues a killed run from its last checkpoint (mid-epoch when ``checkpoint_every_steps`` is set); a
NaN/inf loss stops the run with :class:`~rkd.errors.TrainingDiverged` and the last good checkpoint kept.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rkd.config import ThreatConfig, TrainConfig
from rkd.data import ImageArrays, make_loader
from rkd.distill.base import DistillMethod
from rkd.errors import TrainingDiverged, UsageError
from rkd.models import save_checkpoint
from rkd.train.distributed import current_context
from rkd.train.metrics import MetricsWriter
from rkd.train.progress import NullProgress, ProgressSink
from rkd.train.schedule import build_optimizer, lr_at, set_lr
from rkd.train.state import Position, load_train_state, save_train_state

STATE_FILE = "train_state.pt"
FINAL_CHECKPOINT = "model.safetensors"
BEST_CHECKPOINT = "best.safetensors"


@dataclass
class TrainResult:
    """What a finished run left: the final and best checkpoints and the evaluation history."""

    run_dir: Path
    checkpoint: Path
    best_checkpoint: Path | None
    epochs: int
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_step: int = 0
    seconds: float = 0.0


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def evaluate_holdout(
    model: torch.nn.Module, data: ImageArrays, *, n: int, threat: ThreatConfig, steps: int, seed: int, device: str
) -> dict[str, float]:
    """Clean and PGD-k accuracy of ``model`` on the first ``n`` held-out images."""
    from rkd.verify.suite import evaluate_robustness, parse_attacks

    k = min(n, len(data))
    x = data.to_float(torch.arange(k))
    res = evaluate_robustness(
        model, x, data.y[:k], attacks=parse_attacks([f"pgd{steps}"]), eps=threat.eps, alpha=threat.alpha,
        norm=threat.norm, seed=seed, device=device,
    )
    return {"clean_acc": res.accuracy("clean"), f"pgd{steps}_acc": res.accuracy(f"pgd{steps}"), "n": k}


def _lock_run_dir(run: Path) -> Any:
    """An exclusive lock on ``run/.lock`` held for the run: two trainings never write one run directory."""
    from rkd.atomic import try_lock

    fh = try_lock(run / ".lock")
    if fh is None:
        raise UsageError(f"another process is training in {run}: wait for it or stop it first")
    return fh


def fit(
    method: DistillMethod,
    train_data: ImageArrays,
    holdout: ImageArrays | None,
    cfg: TrainConfig,
    *,
    run_dir: str | Path,
    device: str,
    batch_size: int,
    threat: ThreatConfig,
    fingerprint: str,
    augment: bool = True,
    seed: int = 0,
    resume: bool = False,
    metadata: dict[str, Any] | None = None,
    progress: ProgressSink | None = None,
    save_model: bool = True,
) -> TrainResult:
    """Train ``method.student`` with ``method``'s loss; write checkpoints and metrics into ``run_dir``.

    Args:
        fingerprint: identifies the recipe; resuming a run of another recipe is refused.
        save_model: write the final (and best) checkpoint with ``save_checkpoint``; off for students that are
            not rkd Classifiers (quantization-aware training saves its own way).
        resume: continue from ``run_dir/train_state.pt`` if present (else start fresh). Without it an
            existing state is an error, so nothing is overwritten by accident.
    """
    from rkd.attacks import compile_attack_model

    ctx = current_context()
    sink: ProgressSink = (progress or NullProgress()) if ctx.is_main else NullProgress()
    run = Path(run_dir)
    state_path = run / STATE_FILE
    if state_path.exists() and not resume:
        raise UsageError(f"{run} already holds a run: pass --resume to continue it, or choose another --out")
    if (run / FINAL_CHECKPOINT).exists() and not state_path.exists() and save_model:
        raise UsageError(f"{run} already holds a checkpoint ({FINAL_CHECKPOINT}) and no run to resume: choose another "
                         "--out (a new run never overwrites a model)")
    ctx.barrier()  # every rank has checked before rank 0 writes anything
    lock = None
    if ctx.is_main:
        run.mkdir(parents=True, exist_ok=True)
        lock = _lock_run_dir(run)
    dev = torch.device(device)
    student = method.student
    channels_last = cfg.channels_last != "off"
    method.to(dev)
    if channels_last:
        method.to(memory_format=torch.channels_last)
    method.attack_model = compile_attack_model(student) if cfg.compile_attack else student
    if ctx.distributed:  # the loss passes go through DDP (gradient all-reduce); attacks use the bare module
        from torch.nn.parallel import DistributedDataParallel

        method.student = DistributedDataParallel(student, device_ids=[dev.index] if dev.type == "cuda" else None)
    optimizer = build_optimizer(method.trainable_parameters(), cfg)
    loader = make_loader(
        train_data, batch_size=batch_size, device=dev, shuffle=True, augment=augment, drop_last=True, seed=seed,
        channels_last=channels_last, rank=ctx.rank, world_size=ctx.world_size,
    )
    steps_per_epoch = len(loader)
    total = cfg.epochs * steps_per_epoch
    pos = Position()
    if dev.type == "cpu" and cfg.amp == "bf16":
        from rkd.environment import cpu_runs_bf16

        if cpu_runs_bf16() is False:
            sink.on_event("warning: train.amp is bf16 but this CPU has neither AMX-BF16 nor AVX512-BF16, so bf16 is "
                          "emulated and usually slower than fp32; set train.amp: off (rkd env lists the extensions)")
    if resume and state_path.exists():
        pos = load_train_state(state_path, model=student, optimizer=optimizer, fingerprint=fingerprint)
        sink.on_event(f"resumed at epoch {pos.epoch + 1}, step {pos.step_in_epoch} of {steps_per_epoch}")
    resumed_from = pos.global_step
    metrics = MetricsWriter(run / "metrics.jsonl", enabled=ctx.is_main)
    metrics.write({"event": "resume" if resumed_from else "start", "global_step": pos.global_step,
                   "steps_per_epoch": steps_per_epoch, "epochs": cfg.epochs})
    history: list[dict[str, Any]] = []
    meta = dict(metadata or {})
    t_start = time.perf_counter()
    sink.on_start(total_steps=total, done_steps=pos.global_step, epochs=cfg.epochs)
    try:
        while pos.epoch < cfg.epochs:
            epoch = pos.epoch
            loader.set_epoch(epoch)
            method.set_epoch(epoch)
            method.train()
            run_loss = torch.zeros((), device=dev)
            run_correct = torch.zeros((), device=dev)
            run_seen = 0
            parts_sum: dict[str, torch.Tensor] = {}
            t_epoch = time.perf_counter()
            for x, y in loader.batches(start_step=pos.step_in_epoch):
                lr = lr_at(pos.global_step, steps_per_epoch, cfg)
                set_lr(optimizer, lr)
                with _autocast(dev, cfg.amp):
                    out = method(x, y)
                loss = out.loss.float()
                check = ctx.all_reduce_sum(loss.detach().clone()) if ctx.distributed else loss
                if not torch.isfinite(check):
                    metrics.write({"event": "diverged", "epoch": epoch, "global_step": pos.global_step})
                    kept = (f"the last good checkpoint is kept in {run}" if (run / STATE_FILE).exists()
                            else "no checkpoint was saved yet")
                    raise TrainingDiverged(
                        f"loss became {loss.item()} at epoch {epoch + 1}, step {pos.step_in_epoch + 1}; "
                        f"{kept} (lower the learning rate or check the data)"
                    )
                if not out.backward_done:  # else the method accumulated the gradient itself (low memory)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(method.trainable_parameters(), cfg.grad_clip)
                optimizer.step()
                pos.step_in_epoch += 1
                pos.global_step += 1
                run_loss += loss.detach() * len(y)
                run_correct += (out.logits.detach().argmax(1) == y).sum()
                run_seen += len(y)
                named = {**{f"loss_{k}": v for k, v in out.parts.items()}, **out.stats}  # as metrics.jsonl names them
                for k, v in named.items():
                    parts_sum[k] = parts_sum.get(k, torch.zeros((), device=dev)) + v.detach().float() * len(y)
                if pos.step_in_epoch % cfg.log_every == 0 or pos.step_in_epoch == steps_per_epoch:
                    if ctx.distributed:  # global sums over ranks
                        keys = sorted(parts_sum)
                        packed = torch.stack([run_loss, run_correct.float(), torch.tensor(float(run_seen), device=dev)]
                                             + [parts_sum[k] for k in keys])
                        ctx.all_reduce_sum(packed)
                        run_loss, run_correct, run_seen = packed[0].clone(), packed[1].clone(), int(packed[2])
                        parts_sum = {k: packed[3 + i].clone() for i, k in enumerate(keys)}
                    rec = {
                        "epoch": epoch + 1, "step": pos.step_in_epoch, "global_step": pos.global_step, "lr": lr,
                        "loss": float(run_loss) / run_seen, "train_acc": float(run_correct) / run_seen,
                        **{k: float(v) / run_seen for k, v in parts_sum.items()},
                        "img_per_s": run_seen / max(1e-9, time.perf_counter() - t_epoch),
                    }
                    metrics.write(rec)
                    sink.on_step(step=pos.global_step, epoch=epoch + 1, metrics=rec)
                else:
                    sink.on_step(step=pos.global_step, epoch=epoch + 1, metrics={})
                if cfg.checkpoint_every_steps and pos.global_step % cfg.checkpoint_every_steps == 0:
                    if ctx.is_main:
                        save_train_state(state_path, model=student, optimizer=optimizer, position=pos,
                                         fingerprint=fingerprint)
                    ctx.barrier()
            # epoch finished
            pos.epoch += 1
            pos.step_in_epoch = 0
            do_eval = holdout is not None and cfg.eval_n > 0 and len(holdout) > 0 and (
                (cfg.eval_every and pos.epoch % cfg.eval_every == 0) or pos.epoch == cfg.epochs
            )
            if do_eval and holdout is not None and ctx.is_main:
                ev = evaluate_holdout(student, holdout, n=cfg.eval_n, threat=threat, steps=cfg.eval_pgd_steps,
                                      seed=seed, device=device)
                ev = {"event": "eval", "epoch": pos.epoch, **ev}
                history.append(ev)
                metrics.write(ev)
                robust = ev[f"pgd{cfg.eval_pgd_steps}_acc"]
                sink.on_event(
                    f"epoch {pos.epoch}/{cfg.epochs}: held-out clean {ev['clean_acc']:.1%}, "
                    f"PGD-{cfg.eval_pgd_steps} {robust:.1%} (n={ev['n']})"
                )
                if robust > pos.best_metric:
                    pos.best_metric, pos.best_epoch = robust, pos.epoch
                    if save_model:
                        save_checkpoint(student, run / BEST_CHECKPOINT,
                                        meta | {"epoch": pos.epoch, "holdout": ev, "kind": "best"})
                method.train()
            if ctx.is_main:
                save_train_state(state_path, model=student, optimizer=optimizer, position=pos,
                                 fingerprint=fingerprint)
            ctx.barrier()
        final_eval = history[-1] if history else {}
        seconds = time.perf_counter() - t_start
        ckpt = run / FINAL_CHECKPOINT
        if ctx.is_main and save_model:
            save_checkpoint(
                student, ckpt,
                meta | {"epoch": cfg.epochs, "holdout": final_eval, "kind": "final", "best_epoch": pos.best_epoch},
            )
        metrics.write({"event": "end", "global_step": pos.global_step, "seconds": seconds})
        ctx.barrier()
    finally:
        method.student = student
        method.eval()
        sink.on_end()
        if lock is not None:
            lock.close()
    best = run / BEST_CHECKPOINT
    return TrainResult(
        run_dir=run, checkpoint=ckpt, best_checkpoint=best if best.exists() else None, epochs=cfg.epochs,
        history=history, resumed_from_step=resumed_from, seconds=seconds,
    )
