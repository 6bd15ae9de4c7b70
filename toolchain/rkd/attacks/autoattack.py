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

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from rkd.attacks.checks import (
    check_choice,
    check_count,
    check_eps,
    check_images,
    check_labels,
    frozen_parameters,
    model_device,
)
from rkd.attacks.predictions import batched_classes
from rkd.data.subsets import samples_sha256
from rkd.errors import UsageError

logger = logging.getLogger(__name__)

LIBRARY_LOGGER = "auto-attack"
ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab")
VERSIONS = ("standard", "plus", "rand", "custom")
_LIBRARY_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}
_STATE_FORMAT = "rkd-autoattack-state/1"
_SAVE_EVERY_S = 30.0

# Codes per sample in the state: ROBUST so far, CLEAN_WRONG, or i + 1 = broken by attacks[i].
_ROBUST = -1
_CLEAN_WRONG = 0


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


class _LibraryLogCapture(logging.Handler):
    """Collects the library's warnings; forwards every line to ``log`` and to this module's logger."""

    def __init__(self, messages: list[str], log: Callable[[str], None] | None) -> None:
        super().__init__(logging.DEBUG)
        self.messages = messages
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            if msg not in self.messages:
                self.messages.append(msg)
                logger.warning("AutoAttack: %s", msg)
        else:
            logger.debug("AutoAttack: %s", msg)
        if self.log is not None:
            self.log(msg)


@contextmanager
def _captured_library_logs(messages: list[str], log: Callable[[str], None] | None) -> Iterator[None]:
    lib = logging.getLogger(LIBRARY_LOGGER)
    level, propagate = lib.level, lib.propagate
    handler = _LibraryLogCapture(messages, log)
    lib.addHandler(handler)
    lib.setLevel(logging.DEBUG)
    lib.propagate = False  # re-emitted through rkd's logger instead, at the caller's levels
    try:
        yield
    finally:
        lib.removeHandler(handler)
        lib.setLevel(level)
        lib.propagate = propagate


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


def _model_sha256(model: nn.Module) -> str:
    """sha256 of the model's parameters and buffers (shapes, dtypes, values, in order; not their names, so a
    wrapper around the same model matches): a state file made for another model is refused."""
    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class _State:
    config: dict
    codes: torch.Tensor  # int16 (N,), CPU
    attempted: torch.Tensor  # bool (N,), CPU: points the current attack has finished
    current: int  # index of the attack in progress; len(attacks) when done
    seconds: dict[str, float]
    messages: list[str]

    def save(self, path: Path, x_adv: torch.Tensor) -> None:
        from safetensors.torch import save_file

        broken = (self.codes > 0).nonzero().squeeze(1)
        tensors = {
            "codes": self.codes.contiguous(),
            "attempted": self.attempted.contiguous(),
            "adv_idx": broken.contiguous(),
            "adv": x_adv[broken.to(x_adv.device)].detach().to("cpu").contiguous(),
        }
        meta = {
            "format": _STATE_FORMAT,
            "config": json.dumps(self.config, sort_keys=True),
            "current": str(self.current),
            "seconds": json.dumps(self.seconds),
            "messages": json.dumps(self.messages),
        }
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, config: dict, x_adv: torch.Tensor) -> _State:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is no dict
            if meta.get("format") != _STATE_FORMAT:
                raise ValueError(f"format {meta.get('format')!r}")
            saved = json.loads(meta["config"])
            current = int(meta["current"])
            seconds = {str(k): float(v) for k, v in json.loads(meta["seconds"]).items()}
            messages = [str(m) for m in json.loads(meta["messages"])]
            codes, attempted = tensors["codes"], tensors["attempted"]
            adv_idx, adv = tensors["adv_idx"], tensors["adv"]
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user-facing problem
            raise UsageError(
                f"AutoAttack state {path} is not a readable rkd state file ({exc}); delete it"
            ) from None
        differs = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        if differs:
            raise UsageError(
                f"AutoAttack state {path} was made for another run (differs in: {', '.join(differs)}); "
                "delete it or pass another state_path"
            )
        x_adv[adv_idx.to(x_adv.device)] = adv.to(x_adv.device, x_adv.dtype)
        return cls(saved, codes, attempted, current, seconds, messages)


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
        log: called with every progress line (the library's and rkd's).

    Returns:
        :class:`AutoAttackResult`.

    Raises:
        UsageError: bad eps, norm, version or attack names, inputs outside [0, 1], shapes, a mismatched state.
    """
    norm_key = check_choice("norm", norm, tuple(_LIBRARY_NORMS))
    lib_norm = _LIBRARY_NORMS[norm_key]
    eps = check_eps(eps, norm_key)
    version, custom = _resolve_attacks(version, attacks)
    batch_size = check_count("batch_size", batch_size)
    seed = check_count("seed", seed, minimum=0)
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

    require_pyautoattack()
    from pyautoattack import AutoAttack
    from pyautoattack import checks as aa_checks

    messages: list[str] = []

    def note(msg: str, warn: bool = False) -> None:
        if warn:
            if msg not in messages:
                messages.append(msg)
            logger.warning("%s", msg)
        else:
            logger.info("%s", msg)
        if log is not None:
            log(msg)

    n = x.shape[0]
    with _captured_library_logs(messages, log), frozen_parameters(model), _preserved_rng(dev):
        aa = AutoAttack(
            model,
            device=dev,
            eps=eps,
            norm=lib_norm,
            seed=seed,
            version="standard" if version == "custom" else version,
        )
        if custom is not None:
            aa.attacks_to_run = list(custom)
            aa.version = "custom"
        names: list[str] = list(aa.attacks_to_run)
        x_adv = x.clone()
        config = {
            "eps": eps,
            "norm": lib_norm,
            "version": version,
            "attacks": names,
            "seed": seed,
            "n": n,
            "inputs_sha256": samples_sha256(x, y) if path is not None else "",
            "model_sha256": _model_sha256(model) if path is not None else "",
            "batch_size": batch_size,
        }
        if path is not None and path.exists():
            state = _State.load(path, config, x_adv)
            for m in state.messages:
                if m not in messages:
                    messages.append(m)
            note(f"AutoAttack: resumed {path} at attack {state.current + 1} of {len(names)}")
        else:
            clean_pred = _predict(model, x, dev, batch_size)
            codes = torch.where((clean_pred == y).cpu(), _ROBUST, _CLEAN_WRONG).to(torch.int16)
            state = _State(config, codes, torch.zeros(n, dtype=torch.bool), 0, {}, messages)
            if path is not None:
                state.save(path, x_adv)
        state.messages = messages
        if model.training:
            note(
                "the model is in training mode (batch-norm statistics and dropout change under attack); "
                "call model.eval() first",
                warn=True,
            )
        if n > 0 and state.current < len(names):
            _cap_targets(aa, model, x[:1].to(dev), names, note)

        last_save = time.monotonic()
        for i in range(state.current, len(names)):
            name = names[i]
            aa.attacks_to_run = [name]
            todo = ((state.codes == _ROBUST) & ~state.attempted).nonzero().squeeze(1)
            t0 = time.monotonic()
            n_broken = 0
            for chunk in todo.split(batch_size) if todo.numel() else ():
                idx = chunk.to(x.device)
                xs, ys = x[idx].contiguous(), y[idx]
                adv, _ = aa.run_standard_evaluation(xs, ys, batch_size=batch_size)
                adv = adv.to(x.device)
                fooled = _predict(model, adv, dev, batch_size) != ys
                x_adv[idx[fooled]] = adv[fooled]
                fooled_cpu = fooled.cpu()
                state.codes[chunk[fooled_cpu]] = i + 1
                state.attempted[chunk] = True
                n_broken += int(fooled_cpu.sum())
                if path is not None and time.monotonic() - last_save > _SAVE_EVERY_S:
                    state.save(path, x_adv)
                    last_save = time.monotonic()
            state.seconds[name] = state.seconds.get(name, 0.0) + time.monotonic() - t0
            state.attempted.zero_()
            state.current = i + 1
            if path is not None:
                state.save(path, x_adv)
                last_save = time.monotonic()
            n_robust = int((state.codes == _ROBUST).sum())
            note(
                f"AutoAttack {name}: broke {n_broken} of {todo.numel()}, robust {n_robust}/{n} "
                f"({state.seconds[name]:.1f} s)"
            )

        codes = state.codes
        clean = codes != _CLEAN_WRONG
        robust_flags = codes == _ROBUST
        acc = {"clean": float(clean.float().mean()) if n else 0.0}
        per_attack: dict[str, torch.Tensor] = {}
        for i, name in enumerate(names):
            per_attack[name] = (codes == _ROBUST) | (codes > i + 1)
            acc[name] = float(per_attack[name].float().mean()) if n else 0.0
        aa_checks.check_square_sr(acc, logger=aa.logger)

        recheck = (_predict(model, x_adv, dev, batch_size) == y).cpu()
        robust = robust_flags & recheck
        broken_by: list[str | None] = []
        for c, r in zip(codes.tolist(), robust.tolist(), strict=True):
            if c == _CLEAN_WRONG:
                broken_by.append("clean")
            elif c > 0:
                broken_by.append(names[c - 1])
            else:
                broken_by.append(None if r else "recheck")
        n_flip = int((robust_flags & ~recheck).sum())
        if n_flip:
            note(
                f"{n_flip} sample(s) robust during the attacks are misclassified on the final recheck of "
                "x_adv (non-deterministic model or batch-dependent numerics); counted as not robust",
                warn=True,
            )

    return AutoAttackResult(
        x_adv=x_adv,
        robust=robust.to(x.device),
        clean=clean.to(x.device),
        per_attack={k: v.to(x.device) for k, v in per_attack.items()},
        broken_by=broken_by,
        messages=messages,
        attacks=names,
        version=version,
        eps=eps,
        norm=lib_norm,
        seed=seed,
        seconds=dict(state.seconds),
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
