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
from typing import TYPE_CHECKING, Any, TypedDict

import torch

from rkd.config import ThreatConfig, TrainConfig
from rkd.data import ImageArrays, make_loader
from rkd.distill.base import DistillMethod
from rkd.errors import TrainingDiverged, UsageError
from rkd.models import save_checkpoint
from rkd.train.compile_choice import CompileTrial
from rkd.train.distributed import current_context
from rkd.train.metrics import MetricsWriter
from rkd.train.progress import NullProgress, ProgressSink
from rkd.train.schedule import build_optimizer, lr_at, set_lr
from rkd.train.state import Position, load_train_state, save_train_state

if TYPE_CHECKING:
    from typing_extensions import Unpack

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


class FitOptions(TypedDict, total=False):
    """The optional keyword arguments of :func:`fit` (defaults in brackets)."""

    augment: bool  # random crop + flip of the training batches [True]
    seed: int  # data order, augmentation and held-out attack seed [0]
    resume: bool  # continue from run_dir/train_state.pt [False]
    metadata: dict[str, Any] | None  # written into every checkpoint's sidecar [None]
    progress: ProgressSink | None  # progress display of the main rank [None]
    save_model: bool  # write the final and best checkpoints [True]


def _check_run_dir(run: Path, *, resume: bool, save_model: bool) -> None:
    """Refuse a run directory holding a run (without ``resume``) or a model and no run to resume."""
    state_path = run / STATE_FILE
    if state_path.exists() and not resume:
        raise UsageError(f"{run} already holds a run: pass --resume to continue it, or choose another --out")
    if (run / FINAL_CHECKPOINT).exists() and not state_path.exists() and save_model:
        raise UsageError(f"{run} already holds a checkpoint ({FINAL_CHECKPOINT}) and no run to resume: choose another "
                         "--out (a new run never overwrites a model)")


def _place(method: DistillMethod, cfg: TrainConfig, dev: torch.device, distributed: bool) -> torch.nn.Module:
    """Move ``method`` to ``dev`` (channels_last unless off), set its attack model, wrap the student in DDP when
    ``distributed``; return the bare student."""
    from rkd.attacks import compile_attack_model

    student = method.student
    method.to(dev)
    if cfg.channels_last != "off":
        method.to(memory_format=torch.channels_last)
    method.attack_model = compile_attack_model(student) if cfg.compile_attack is True else student
    if distributed:  # the loss passes go through DDP (gradient all-reduce); attacks use the bare module
        from torch.nn.parallel import DistributedDataParallel

        method.student = DistributedDataParallel(student, device_ids=[dev.index] if dev.type == "cuda" else None)
    return student


def _warn_emulated_bf16(dev: torch.device, cfg: TrainConfig, sink: ProgressSink) -> None:
    if dev.type == "cpu" and cfg.amp == "bf16":
        from rkd.environment import cpu_runs_bf16

        if cpu_runs_bf16() is False:
            sink.on_event("warning: train.amp is bf16 but this CPU has neither AMX-BF16 nor AVX512-BF16, so bf16 is "
                          "emulated and usually slower than fp32; set train.amp: off (rkd env lists the extensions)")


class _Tally:
    """The running sums of an epoch (loss, correct, images, loss parts and stats), reduced over ranks to log."""

    def __init__(self, dev: torch.device) -> None:
        self.dev = dev
        self.loss = torch.zeros((), device=dev)
        self.correct = torch.zeros((), device=dev)
        self.seen = 0
        self.parts: dict[str, torch.Tensor] = {}
        self.t0 = time.perf_counter()

    def add(self, out: Any, loss: torch.Tensor, y: torch.Tensor) -> None:
        self.loss += loss.detach() * len(y)
        self.correct += (out.logits.detach().argmax(1) == y).sum()
        self.seen += len(y)
        named = {**{f"loss_{k}": v for k, v in out.parts.items()}, **out.stats}  # as metrics.jsonl names them
        for k, v in named.items():
            self.parts[k] = self.parts.get(k, torch.zeros((), device=self.dev)) + v.detach().float() * len(y)

    def record(self, ctx: Any, *, epoch: int, pos: Position, lr: float) -> dict[str, Any]:
        """The metrics line: global sums over ranks (kept as the new running sums) divided by the images seen."""
        if ctx.distributed:
            keys = sorted(self.parts)
            packed = torch.stack([self.loss, self.correct.float(), torch.tensor(float(self.seen), device=self.dev)]
                                 + [self.parts[k] for k in keys])
            ctx.all_reduce_sum(packed)
            self.loss, self.correct, self.seen = packed[0].clone(), packed[1].clone(), int(packed[2])
            self.parts = {k: packed[3 + i].clone() for i, k in enumerate(keys)}
        return {
            "epoch": epoch + 1, "step": pos.step_in_epoch, "global_step": pos.global_step, "lr": lr,
            "loss": float(self.loss) / self.seen, "train_acc": float(self.correct) / self.seen,
            **{k: float(v) / self.seen for k, v in self.parts.items()},
            "img_per_s": self.seen / max(1e-9, time.perf_counter() - self.t0),
        }


class _Run:
    """One call of :func:`fit`: the placed method, optimizer, loader, position, metrics and progress."""

    def __init__(self, method: DistillMethod, train_data: ImageArrays, holdout: ImageArrays | None,
                 cfg: TrainConfig, run: Path, *, device: str, batch_size: int, threat: ThreatConfig,
                 fingerprint: str, opts: FitOptions) -> None:
        self.ctx = ctx = current_context()
        self.method, self.holdout, self.cfg, self.run, self.threat = method, holdout, cfg, run, threat
        self.device, self.dev, self.fingerprint = device, torch.device(device), fingerprint
        self.seed, self.save_model = opts.get("seed", 0), opts.get("save_model", True)
        self.meta = dict(opts.get("metadata") or {})
        self.sink: ProgressSink = (opts.get("progress") or NullProgress()) if ctx.is_main else NullProgress()
        self.state_path = run / STATE_FILE
        self.student = _place(method, cfg, self.dev, ctx.distributed)
        self.optimizer = build_optimizer(method.trainable_parameters(), cfg)
        self.loader = make_loader(
            train_data, batch_size=batch_size, device=self.dev, shuffle=True, augment=opts.get("augment", True),
            drop_last=True, seed=self.seed, channels_last=cfg.channels_last != "off", rank=ctx.rank,
            world_size=ctx.world_size,
        )
        self.steps_per_epoch = len(self.loader)
        self.pos = Position()
        self.history: list[dict[str, Any]] = []
        _warn_emulated_bf16(self.dev, cfg, self.sink)
        if opts.get("resume", False) and self.state_path.exists():
            self.pos = load_train_state(self.state_path, model=self.student, optimizer=self.optimizer,
                                        fingerprint=fingerprint)
            self.sink.on_event(f"resumed at epoch {self.pos.epoch + 1}, step {self.pos.step_in_epoch} of "
                               f"{self.steps_per_epoch}")
        self.resumed_from = self.pos.global_step
        self.metrics = MetricsWriter(run / "metrics.jsonl", enabled=ctx.is_main)
        self.trial = self._compile_trial() if cfg.compile_attack == "auto" else None

    def _compile_trial(self) -> CompileTrial:
        from rkd.attacks import compile_attack_model

        def install(model: torch.nn.Module) -> None:
            self.method.attack_model = model

        def reduce(seconds: float) -> float:
            if not self.ctx.distributed:
                return seconds
            return float(self.ctx.all_reduce_sum(torch.tensor([seconds], device=self.dev)).item())

        left = self.cfg.epochs * self.steps_per_epoch - self.pos.global_step
        return CompileTrial(eager=self.student, install=install, remaining_steps=left,
                            compile_fn=compile_attack_model, reduce=reduce)

    def _timed_step(self, x: torch.Tensor, y: torch.Tensor, epoch: int, lr: float) -> tuple[Any, torch.Tensor]:
        """:meth:`step`, timed for the ``compile_attack: auto`` trial while it lasts."""
        trial = self.trial
        if trial is None:
            return self.step(x, y, epoch, lr)
        t0 = time.perf_counter()
        out, loss = self.step(x, y, epoch, lr)
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
        decision = trial.after_step(time.perf_counter() - t0)
        if decision is not None:  # decided: later steps are not timed
            self.trial = None
            self.metrics.write({**decision, "global_step": self.pos.global_step})
            self.sink.on_event(f"compile_attack auto: {decision['choice']} ({decision['reason']})")
        return out, loss

    def save_state(self) -> None:
        if self.ctx.is_main:
            save_train_state(self.state_path, model=self.student, optimizer=self.optimizer, position=self.pos,
                             fingerprint=self.fingerprint)
        self.ctx.barrier()

    def step(self, x: torch.Tensor, y: torch.Tensor, epoch: int, lr: float) -> tuple[Any, torch.Tensor]:
        """One optimizer step; a non-finite loss (on any rank) raises :class:`TrainingDiverged`."""
        method, optimizer, cfg, pos = self.method, self.optimizer, self.cfg, self.pos
        set_lr(optimizer, lr)
        with _autocast(self.dev, cfg.amp):
            out = method(x, y)
        loss = out.loss.float()
        check = self.ctx.all_reduce_sum(loss.detach().clone()) if self.ctx.distributed else loss
        if not torch.isfinite(check):
            self.metrics.write({"event": "diverged", "epoch": epoch, "global_step": pos.global_step})
            kept = (f"the last good checkpoint is kept in {self.run}" if self.state_path.exists()
                    else "no checkpoint was saved yet")
            raise TrainingDiverged(f"loss became {loss.item()} at epoch {epoch + 1}, step {pos.step_in_epoch + 1}; "
                                   f"{kept} (lower the learning rate or check the data)")
        if not out.backward_done:  # else the method accumulated the gradient itself (low memory)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(method.trainable_parameters(), cfg.grad_clip)
        optimizer.step()
        pos.step_in_epoch += 1
        pos.global_step += 1
        return out, loss

    def epoch(self) -> None:
        """Train the epoch at ``pos`` from its step, logging every ``log_every`` steps and at its end."""
        epoch, cfg, pos = self.pos.epoch, self.cfg, self.pos
        self.loader.set_epoch(epoch)
        self.method.set_epoch(epoch)
        self.method.train()
        tally = _Tally(self.dev)
        for x, y in self.loader.batches(start_step=pos.step_in_epoch):
            lr = lr_at(pos.global_step, self.steps_per_epoch, cfg)
            out, loss = self._timed_step(x, y, epoch, lr)
            tally.add(out, loss, y)
            if pos.step_in_epoch % cfg.log_every == 0 or pos.step_in_epoch == self.steps_per_epoch:
                rec = tally.record(self.ctx, epoch=epoch, pos=pos, lr=lr)
                self.metrics.write(rec)
                self.sink.on_step(step=pos.global_step, epoch=epoch + 1, metrics=rec)
            else:
                self.sink.on_step(step=pos.global_step, epoch=epoch + 1, metrics={})
            if cfg.checkpoint_every_steps and pos.global_step % cfg.checkpoint_every_steps == 0:
                self.save_state()
        pos.epoch += 1
        pos.step_in_epoch = 0

    def evaluate(self) -> None:
        """Held-out clean and PGD accuracy after an epoch (when due); the best so far is saved as best."""
        cfg, pos, holdout = self.cfg, self.pos, self.holdout
        due = holdout is not None and cfg.eval_n > 0 and len(holdout) > 0 and (
            (cfg.eval_every and pos.epoch % cfg.eval_every == 0) or pos.epoch == cfg.epochs)
        if not (due and holdout is not None and self.ctx.is_main):
            return
        ev = evaluate_holdout(self.student, holdout, n=cfg.eval_n, threat=self.threat, steps=cfg.eval_pgd_steps,
                              seed=self.seed, device=self.device)
        ev = {"event": "eval", "epoch": pos.epoch, **ev}
        self.history.append(ev)
        self.metrics.write(ev)
        robust = ev[f"pgd{cfg.eval_pgd_steps}_acc"]
        self.sink.on_event(f"epoch {pos.epoch}/{cfg.epochs}: held-out clean {ev['clean_acc']:.1%}, "
                           f"PGD-{cfg.eval_pgd_steps} {robust:.1%} (n={ev['n']})")
        if robust > pos.best_metric:
            pos.best_metric, pos.best_epoch = robust, pos.epoch
            if self.save_model:
                save_checkpoint(self.student, self.run / BEST_CHECKPOINT,
                                self.meta | {"epoch": pos.epoch, "holdout": ev, "kind": "best"})
        self.method.train()

    def train(self) -> float:
        """Every remaining epoch, then the final checkpoint; the seconds it took."""
        cfg, pos = self.cfg, self.pos
        self.metrics.write({"event": "resume" if self.resumed_from else "start", "global_step": pos.global_step,
                            "steps_per_epoch": self.steps_per_epoch, "epochs": cfg.epochs})
        t_start = time.perf_counter()
        self.sink.on_start(total_steps=cfg.epochs * self.steps_per_epoch, done_steps=pos.global_step,
                           epochs=cfg.epochs)
        while pos.epoch < cfg.epochs:
            self.epoch()
            self.evaluate()
            self.save_state()
        seconds = time.perf_counter() - t_start
        if self.ctx.is_main and self.save_model:
            final_eval = self.history[-1] if self.history else {}
            save_checkpoint(self.student, self.run / FINAL_CHECKPOINT, self.meta | {
                "epoch": cfg.epochs, "holdout": final_eval, "kind": "final", "best_epoch": pos.best_epoch})
        self.metrics.write({"event": "end", "global_step": pos.global_step, "seconds": seconds})
        self.ctx.barrier()
        return seconds


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
    **options: Unpack[FitOptions],
) -> TrainResult:
    """Train ``method.student`` with ``method``'s loss; write checkpoints and metrics into ``run_dir``.

    Args:
        fingerprint: identifies the recipe; resuming a run of another recipe is refused.
        options: :class:`FitOptions`. ``save_model``: write the final (and best) checkpoint with
            ``save_checkpoint``; off for students that are not rkd Classifiers (quantization-aware training saves
            its own way). ``resume``: continue from ``run_dir/train_state.pt`` if present (else start fresh).
            Without it an existing state is an error, so nothing is overwritten by accident.
    """
    unknown = set(options) - set(FitOptions.__annotations__)
    if unknown:
        raise TypeError(f"fit() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    ctx = current_context()
    run = Path(run_dir)
    _check_run_dir(run, resume=options.get("resume", False), save_model=options.get("save_model", True))
    ctx.barrier()  # every rank has checked before rank 0 writes anything
    lock = None
    if ctx.is_main:
        run.mkdir(parents=True, exist_ok=True)
        lock = _lock_run_dir(run)
    student = method.student
    sink: ProgressSink | None = None
    try:
        state = _Run(method, train_data, holdout, cfg, run, device=device, batch_size=batch_size, threat=threat,
                     fingerprint=fingerprint, opts=options)
        sink = state.sink
        seconds = state.train()
    finally:
        method.student = student
        method.eval()
        if sink is not None:
            sink.on_end()
        if lock is not None:
            lock.close()
    best = run / BEST_CHECKPOINT
    return TrainResult(
        run_dir=run, checkpoint=run / FINAL_CHECKPOINT, best_checkpoint=best if best.exists() else None,
        epochs=cfg.epochs, history=state.history, resumed_from_step=state.resumed_from, seconds=seconds,
    )
