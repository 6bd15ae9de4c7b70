"""AutoAttack (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks") through ``pyautoattack`` (the authors' code on the package index), with a per-attack,
per-sample breakdown and a resumable state.

pyautoattack's ``AutoAttack.run_standard_evaluation`` runs each attack only on the points still robust and
returns only the final ``(x_adv, y_adv)``. To know which attack broke which sample without running anything
twice, :func:`run_autoattack` drives it one attack at a time (``attacks_to_run = [name]``) on the points that
are still robust, in chunks of ``batch_size``, and checks every adversarial example itself with the model.
That is the library's own loop, so the result is the same per-sample worst case; only its cheap input checks
(a few forwards of one chunk) repeat per call.

pyautoattack 0.2.0 facts this relies on (read from its source):
- ``AutoAttack(model, *, attacks=None, device='cpu', eps=0.3, norm='Linf', seed=None, version='standard')``:
  eps and device are always passed explicitly here.
- It logs through the ``auto-attack`` logger: progress at DEBUG/INFO, check results at WARNING (softmax
  outputs, randomised or dynamic defences, zero gradients, too many target classes, Square beating the
  gradient attacks). Those warnings become :attr:`AutoAttackResult.messages`.
- Its ``state_path`` (``EvaluationState``) cannot resume in 0.2.0: the attack set is written with
  ``json.dump(default=str)`` and read back as a string, so a restore raises ValueError (and ``y_adv`` is
  unbound on that path). rkd therefore keeps its own state file (see ``state_path`` below) and never passes
  one to the library.
- It reseeds torch's global RNG (``torch.manual_seed(seed)``) in every attack; the caller's CPU generator and
  the attacked CUDA device's generator are restored afterwards.
- FAB calls ``.backward()``: parameters are frozen for the run so the model gets no ``.grad``.
- Its dynamic-defence check runs one forward under ``sys.settrace`` and then calls ``sys.settrace(None)``,
  which also switches off any tracer that was active in the thread (coverage, a debugger).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rkd.attacks.autoattack_state import CLEAN_WRONG, ROBUST, AutoAttackState, model_sha256
from rkd.attacks.checks import (
    check_choice,
    check_eps,
    check_images,
    check_labels,
    frozen_parameters,
    model_device,
)
from rkd.attacks.library_output import LIBRARY_LOGGER, captured_library_logs, stdout_to_log  # noqa: F401
from rkd.attacks.predictions import batched_classes
from rkd.checks import check_int
from rkd.data.subsets import samples_sha256
from rkd.errors import UsageError
from rkd.progress import unit as progress_unit

logger = logging.getLogger(__name__)

ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab")
VERSIONS = ("standard", "plus", "rand", "custom")
_LIBRARY_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}
_SAVE_EVERY_S = 30.0


@dataclass
class AutoAttackResult:
    """What :func:`run_autoattack` returns. Masks are bool tensors (N,) on x's device.

    Attributes:
        x_adv: adversarial examples; x itself for robust and clean-misclassified samples.
        robust: correct on the clean input and on every attack's output (per-sample worst case), rechecked
            with the model on ``x_adv``, not taken from the library.
        clean: correct on the clean input.
        per_attack: cumulative: ``per_attack[a]`` = still robust after the clean check and every attack up to
            and including ``a`` (AutoAttack runs each attack only on points still robust, so "what ``a`` alone
            would break" is not measured). Same as :attr:`robust_after`.
        broken_by: per sample, the attack that broke it, "clean" if misclassified without attack, "recheck" if
            only the final recheck on ``x_adv`` found it wrong (numerical disagreement), None if robust.
        messages: warnings from pyautoattack's checks and from rkd (deduplicated, in order).
        attacks: the attacks run, in order. version: "standard", "plus", "rand" or "custom".
        eps, norm, seed: the threat model and seed. seconds: wall time per attack (summed over resumes).
    """

    x_adv: torch.Tensor
    robust: torch.Tensor
    clean: torch.Tensor
    per_attack: dict[str, torch.Tensor]
    broken_by: list[str | None]
    messages: list[str]
    attacks: list[str]
    version: str
    eps: float
    norm: str
    seed: int
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def robust_after(self) -> dict[str, torch.Tensor]:
        """Cumulative robustness after each attack (alias of :attr:`per_attack`)."""
        return self.per_attack

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.robust.shape[0])

    @property
    def clean_acc(self) -> float:
        """Clean accuracy in [0, 1]."""
        return float(self.clean.float().mean()) if self.n else float("nan")

    @property
    def robust_acc(self) -> float:
        """AutoAttack (robust) accuracy in [0, 1]."""
        return float(self.robust.float().mean()) if self.n else float("nan")


@contextmanager
def _preserved_rng(device: torch.device) -> Iterator[None]:
    devices: list[int] = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        yield


def _predict(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int) -> torch.Tensor:
    """:func:`~rkd.attacks.predictions.predicted_class` (N,) on x's device, batched, without grad."""
    return batched_classes(model, x, batch_size, device).to(x.device)


def require_pyautoattack(what: str = "AutoAttack") -> None:
    """Import pyautoattack, or raise :class:`~rkd.errors.MissingDependencyError` (exit 3) naming ``what`` needs it."""
    from rkd.errors import MissingDependencyError

    try:
        import pyautoattack  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"{what} needs pyautoattack, which cannot be imported here ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else exc}): pip install pyautoattack, or drop autoattack, square "
            "and aa-custom from the attacks") from None


def _resolve_attacks(version: str, attacks: list[str] | None) -> tuple[str, list[str] | None]:
    version = check_choice("version", version, VERSIONS)
    if attacks is None:
        if version == "custom":
            raise UsageError(f"version 'custom' needs attacks=[...], a subset of {', '.join(ATTACKS)}")
        return version, None
    if version in ("plus", "rand"):
        raise UsageError(f"attacks=[...] cannot be combined with version '{version}'; leave version out")
    if isinstance(attacks, str) or not attacks:
        raise UsageError(
            f"attacks must be a non-empty list of names from {', '.join(ATTACKS)}; got {attacks!r}"
        )
    names = [check_choice("attack", a, ATTACKS) for a in attacks]
    if len(set(names)) != len(names):
        raise UsageError(f"attacks lists an attack twice: {names}")
    return "custom", names


@dataclass(frozen=True)
class _Setup:
    """The checked arguments of one :func:`run_autoattack` call."""

    x: torch.Tensor
    y: torch.Tensor
    eps: float
    lib_norm: str
    version: str
    custom: list[str] | None
    batch_size: int
    seed: int
    device: torch.device
    path: Path | None


def _check_arguments(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, version: str,
                     attacks: list[str] | None, batch_size: int, seed: int, device: str | torch.device | None,
                     state_path: str | Path | None) -> _Setup:
    """Every argument checked before the library is imported (UsageError naming the bad one)."""
    norm_key = check_choice("norm", norm, tuple(_LIBRARY_NORMS))
    eps = check_eps(eps, norm_key)
    version, custom = _resolve_attacks(version, attacks)
    batch_size = check_int("batch_size", batch_size)
    seed = check_int("seed", seed, minimum=0)
    if torch.is_inference_mode_enabled():
        raise UsageError("run_autoattack needs autograd: call it outside torch.inference_mode")
    x = check_images(x)
    if x.dim() != 4:
        raise UsageError(f"x must be shaped (N, C, H, W); got {tuple(x.shape)}")
    x = x.contiguous()
    y = check_labels(y, x.shape[0], x.device)
    own_device = model_device(model, x.device)
    dev = torch.device(device) if device is not None else own_device
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if any(True for _ in model.parameters()) and own_device != dev:
        raise UsageError(
            f"device {dev} differs from the model's device {own_device}; move the model or omit device"
        )
    path = Path(state_path) if state_path is not None else None
    return _Setup(x, y, eps, _LIBRARY_NORMS[norm_key], version, custom, batch_size, seed, dev, path)


class _Notes:
    """rkd's own progress lines and warnings: warnings kept once in ``messages``; every line to ``log``."""

    def __init__(self, messages: list[str], log: Callable[[str], None] | None) -> None:
        self.messages = messages
        self.log = log

    def __call__(self, msg: str, warn: bool = False) -> None:
        if warn:
            if msg not in self.messages:
                self.messages.append(msg)
            logger.warning("%s", msg)
        else:
            logger.info("%s", msg)
        if self.log is not None:
            self.log(msg)


def run_autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    version: str = "standard",
    attacks: list[str] | None = None,
    batch_size: int = 250,
    seed: int = 0,
    device: str | torch.device | None = None,
    state_path: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> AutoAttackResult:
    """Runs AutoAttack (Croce & Hein 2020) with pyautoattack and returns the per-sample, per-attack outcome.

    Standard = APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square (5000 queries), each only on the points
    still robust. A list of ``attacks`` runs those attacks, in that order, with the standard version's
    parameters (so a subset's numbers are those of the same attacks in standard AutoAttack), labelled
    version "custom". Target counts are capped at (classes - 1) for models with fewer than 10 classes.

    Progress goes to the sink installed with :func:`rkd.progress.reporting` (one unit per sub-attack, advanced
    per chunk); whatever pyautoattack prints to stdout goes to this module's logger (INFO), not to stdout.

    Args:
        model: the classifier (inputs in [0, 1], logits out), in eval mode (its mode is not changed; a model
            in training mode is reported in ``messages``). Its parameters are frozen during the run.
        x: (N, C, H, W) float images in [0, 1]; made contiguous (pyautoattack calls ``.view`` on gradients).
        y: (N,) labels.
        eps: radius; in (0, 1] for Linf.
        norm: "Linf", "L2" or "L1".
        version: "standard", "plus", "rand", or "custom" (implied by ``attacks``).
        attacks: sub-attacks for a custom run, from apgd-ce, apgd-t, fab-t, square, apgd-dlr, fab.
        batch_size: points per attack call.
        seed: seed of every attack.
        device: where the batches go; default: the model's device.
        state_path: rkd's own resumable state (safetensors, written after every attack and at most every 30 s
            within one): a later call with the same path, inputs and settings continues where it stopped,
            and a finished state returns its result without attacking. A state made for other inputs or
            settings is a UsageError.
        log: called with rkd's progress lines and the library's warnings (its other lines go to the log).

    Returns:
        :class:`AutoAttackResult`.

    Raises:
        UsageError: bad eps, norm, version or attack names, inputs outside [0, 1], shapes, a mismatched state.
    """
    s = _check_arguments(model, x, y, eps=eps, norm=norm, version=version, attacks=attacks, batch_size=batch_size,
                         seed=seed, device=device, state_path=state_path)
    require_pyautoattack()
    from pyautoattack import AutoAttack

    messages: list[str] = []
    note = _Notes(messages, log)
    with (captured_library_logs(messages, log), stdout_to_log(), frozen_parameters(model),
          _preserved_rng(s.device)):
        aa = AutoAttack(model, device=s.device, eps=s.eps, norm=s.lib_norm, seed=s.seed,
                        version="standard" if s.version == "custom" else s.version)
        if s.custom is not None:
            aa.attacks_to_run = list(s.custom)
            aa.version = "custom"
        names: list[str] = list(aa.attacks_to_run)
        x_adv = s.x.clone()
        state = _open_state(model, s, names, x_adv, note)
        if model.training:
            note("the model is in training mode (batch-norm statistics and dropout change under attack); "
                 "call model.eval() first", warn=True)
        if s.x.shape[0] > 0 and state.current < len(names):
            _cap_targets(aa, model, s.x[:1].to(s.device), names, note)
        last_save = time.monotonic()
        for i in range(state.current, len(names)):
            last_save = _run_one(aa, model, s, state, i, names, x_adv, last_save, note)
        return _result(aa, model, s, state, names, x_adv, note)


def _open_state(model: nn.Module, s: _Setup, names: list[str], x_adv: torch.Tensor, note: _Notes) -> AutoAttackState:
    """The resumed state at ``s.path`` (filling ``x_adv``), or a new one after the clean check."""
    n = s.x.shape[0]
    config = {
        "eps": s.eps, "norm": s.lib_norm, "version": s.version, "attacks": names, "seed": s.seed, "n": n,
        "inputs_sha256": samples_sha256(s.x, s.y) if s.path is not None else "",
        "model_sha256": model_sha256(model) if s.path is not None else "",
        "batch_size": s.batch_size,
    }
    messages = note.messages
    if s.path is not None and s.path.exists():
        state = AutoAttackState.load(s.path, config, x_adv)
        for m in state.messages:
            if m not in messages:
                messages.append(m)
        note(f"AutoAttack: resumed {s.path} at attack {state.current + 1} of {len(names)}")
    else:
        clean_pred = _predict(model, s.x, s.device, s.batch_size)
        codes = torch.where((clean_pred == s.y).cpu(), ROBUST, CLEAN_WRONG).to(torch.int16)
        state = AutoAttackState(config, codes, torch.zeros(n, dtype=torch.bool), 0, {}, messages)
        if s.path is not None:
            state.save(s.path, x_adv)
    state.messages = messages
    return state


def _run_one(aa: Any, model: nn.Module, s: _Setup, state: AutoAttackState, i: int, names: list[str],
             x_adv: torch.Tensor, last_save: float, note: Callable[..., None]) -> float:
    """Attack ``names[i]`` on the points still robust and not yet attempted, chunk by chunk, saving the state
    at most every :data:`_SAVE_EVERY_S` and after the attack; returns the time of the last save."""
    name = names[i]
    aa.attacks_to_run = [name]
    todo = ((state.codes == ROBUST) & ~state.attempted).nonzero().squeeze(1)
    t0 = time.monotonic()
    n_broken = done = 0
    with progress_unit(f"autoattack {name}", int(todo.numel())) as sink:
        for chunk in todo.split(s.batch_size) if todo.numel() else ():
            idx = chunk.to(s.x.device)
            xs, ys = s.x[idx].contiguous(), s.y[idx]
            adv, _ = aa.run_standard_evaluation(xs, ys, batch_size=s.batch_size)
            adv = adv.to(s.x.device)
            fooled = _predict(model, adv, s.device, s.batch_size) != ys
            x_adv[idx[fooled]] = adv[fooled]
            fooled_cpu = fooled.cpu()
            state.codes[chunk[fooled_cpu]] = i + 1
            state.attempted[chunk] = True
            n_broken += int(fooled_cpu.sum())
            done += int(chunk.numel())
            sink.advance(done, done - n_broken)
            if s.path is not None and time.monotonic() - last_save > _SAVE_EVERY_S:
                state.save(s.path, x_adv)
                last_save = time.monotonic()
    state.seconds[name] = state.seconds.get(name, 0.0) + time.monotonic() - t0
    state.attempted.zero_()
    state.current = i + 1
    if s.path is not None:
        state.save(s.path, x_adv)
        last_save = time.monotonic()
    n_robust = int((state.codes == ROBUST).sum())
    note(f"AutoAttack {name}: broke {n_broken} of {todo.numel()}, robust {n_robust}/{s.x.shape[0]} "
         f"({state.seconds[name]:.1f} s)")
    return last_save


def _result(aa: Any, model: nn.Module, s: _Setup, state: AutoAttackState, names: list[str], x_adv: torch.Tensor,
            note: Callable[..., None]) -> AutoAttackResult:
    """The per-attack breakdown and the final recheck of ``x_adv`` on the model."""
    from pyautoattack import checks as aa_checks

    n, codes = s.x.shape[0], state.codes
    clean = codes != CLEAN_WRONG
    robust_flags = codes == ROBUST
    acc = {"clean": float(clean.float().mean()) if n else 0.0}
    per_attack: dict[str, torch.Tensor] = {}
    for i, name in enumerate(names):
        per_attack[name] = (codes == ROBUST) | (codes > i + 1)
        acc[name] = float(per_attack[name].float().mean()) if n else 0.0
    aa_checks.check_square_sr(acc, logger=aa.logger)

    recheck = (_predict(model, x_adv, s.device, s.batch_size) == s.y).cpu()
    robust = robust_flags & recheck
    broken_by: list[str | None] = []
    for c, r in zip(codes.tolist(), robust.tolist(), strict=True):
        if c == CLEAN_WRONG:
            broken_by.append("clean")
        elif c > 0:
            broken_by.append(names[c - 1])
        else:
            broken_by.append(None if r else "recheck")
    n_flip = int((robust_flags & ~recheck).sum())
    if n_flip:
        note(f"{n_flip} sample(s) robust during the attacks are misclassified on the final recheck of x_adv "
             "(non-deterministic model or batch-dependent numerics); counted as not robust", warn=True)
    dev = s.x.device
    return AutoAttackResult(
        x_adv=x_adv, robust=robust.to(dev), clean=clean.to(dev),
        per_attack={k: v.to(dev) for k, v in per_attack.items()},
        broken_by=broken_by, messages=state.messages, attacks=names, version=s.version, eps=s.eps, norm=s.lib_norm,
        seed=s.seed, seconds=dict(state.seconds),
    )


def _cap_targets(
    aa: object, model: nn.Module, x1: torch.Tensor, names: list[str], note: Callable[..., None]
) -> None:
    """Caps APGD-T/FAB-T target counts at classes - 1; refuses DLR losses without enough classes."""
    with torch.no_grad():
        n_cls = int(model(x1).shape[-1])
    if "apgd-t" in names and n_cls < 4:
        raise UsageError(f"apgd-t (targeted DLR loss) needs at least 4 classes; the model has {n_cls}")
    if "apgd-dlr" in names and n_cls < 3:
        raise UsageError(f"apgd-dlr (DLR loss) needs at least 3 classes; the model has {n_cls}")
    for attr, name in (("apgd_targeted", "apgd-t"), ("fab", "fab-t")):
        sub = getattr(aa, attr)
        if name in names and sub.n_target_classes > n_cls - 1:
            note(f"{name}: {sub.n_target_classes} target classes capped at {n_cls - 1} ({n_cls} classes)")
            sub.n_target_classes = n_cls - 1
