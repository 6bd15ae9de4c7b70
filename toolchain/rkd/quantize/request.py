"""What one ``rkd quantize`` run does, decided and checked in one place, then fixed.

A :class:`QuantizeRequest` (with its :class:`QatOptions`) is built once, by the command line or by
:func:`rkd.api.quantize`, and checked once (:meth:`QuantizeRequest.validate`); the pipeline
(:func:`rkd.quantize.pipeline.run_quantize`) only reads it. The same shape as :class:`rkd.verify.request.VerifyRequest`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from rkd.checks import check_int
from rkd.errors import UsageError

#: Quantization schemes (:data:`rkd.quantize.ort_static.SCHEMES`), named here so the request needs no torch.
SCHEMES = ("cpu", "trt")
#: Calibration methods (:data:`rkd.quantize.ort_static.METHODS`).
METHODS = ("minmax", "entropy", "percentile")
DataArg = tuple[str, dict[str, Any]]


def check_device(device: str) -> None:
    """Refuse a device spec that is none of ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (exit 2)."""
    if device not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", device):
        raise UsageError(f"unknown device '{device}': use auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class QatOptions:
    """Robust quantization-aware training after PTQ (:mod:`rkd.quantize.qat`): registry ``method`` (``teacher``
    for methods that distil), ``epochs`` at constant SGD ``lr`` on ``train_n`` training images (all when None),
    ``steps`` attack steps (the method's default when None)."""

    method: str = "adv_path"
    epochs: int = 1
    lr: float = 0.01
    teacher: str | Path | None = None
    train_n: int | None = None
    steps: int | None = None

    def validate(self) -> None:
        """Raise UsageError (naming the CLI option) on a bad value; a distilling method without a teacher."""
        from rkd.quantize.qat import needs_teacher

        check_int("--epochs", self.epochs)
        if self.train_n is not None:
            check_int("--train-n", self.train_n)
        if self.steps is not None:
            check_int("--qat-steps", self.steps)
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise UsageError(f"--qat-lr must be > 0, got {self.lr!r}")
        if needs_teacher(self.method):
            if self.teacher is None:
                raise UsageError(f"--qat with method '{self.method}' distils from a teacher: pass --teacher "
                                 "CHECKPOINT (or choose a teacher-free --qat-method such as pgd_at)")
            if not Path(self.teacher).is_file():
                raise UsageError(f"teacher checkpoint not found: '{self.teacher}'")


@dataclass(frozen=True)
class QuantizeRequest:
    """Quantize ``checkpoint`` into ``bundle``; see ``rkd quantize --help`` for each field. ``calib_data`` and
    ``eval_data`` are ``(dataset, options)`` as from :func:`rkd.data.parse_data_arg` (None: what the checkpoint
    records, else CIFAR-10); ``qat`` is None for PTQ only."""

    checkpoint: Path
    bundle: Path
    scheme: str = "cpu"
    method: str = "minmax"
    calib_data: DataArg | None = None
    calib_n: int = 512
    data_root: str | None = None
    eval_n: int = 1000
    eval_data: DataArg | None = None
    eval_attacks: str | None = "pgd20"
    debug_layers: bool = False
    force: bool = False
    seed: int = 0
    nodes_to_exclude: tuple[str, ...] = ()
    batch_size: int = 256
    device: str = "auto"
    qat: QatOptions | None = None

    @property
    def eval_steps(self) -> int:
        """Steps of the PGD attack of ``eval_attacks`` (0: clean only)."""
        from rkd.quantize.pipeline import parse_eval_attacks

        return parse_eval_attacks(self.eval_attacks)

    def validate(self) -> QuantizeRequest:
        """Check every field (one-line UsageError naming the option); returns the request."""
        if self.scheme not in SCHEMES:
            raise UsageError(f"unknown scheme '{self.scheme}'; choose {', '.join(SCHEMES)}")
        if self.method not in METHODS:
            raise UsageError(f"unknown calibration method '{self.method}'; choose {', '.join(METHODS)}")
        check_int("--calib-n", self.calib_n)
        check_int("--eval-n", self.eval_n, 0)
        check_int("--batch-size", self.batch_size)
        check_device(self.device)
        _ = self.eval_steps
        if self.qat is not None:
            self.qat.validate()
        return self


#: ``quantize_checkpoint``'s keyword names that map onto :class:`QatOptions` fields.
_QAT_KEYS = {"qat_method": "method", "qat_epochs": "epochs", "qat_lr": "lr", "qat_teacher": "teacher",
             "qat_train_n": "train_n", "qat_steps": "steps"}


def request_from_kwargs(checkpoint: str | Path, bundle: str | Path, **kw: Any) -> QuantizeRequest:
    """A :class:`QuantizeRequest` from the flat keywords of :func:`rkd.quantize.pipeline.quantize_checkpoint`
    (``profile`` is the old name of ``scheme``; ``qat=True`` with ``qat_*`` options).

    Raises:
        UsageError: an unknown keyword.
    """
    if "profile" in kw:
        kw.setdefault("scheme", kw.pop("profile"))
    qat_kw = {_QAT_KEYS[k]: kw.pop(k) for k in list(kw) if k in _QAT_KEYS}
    qat = QatOptions(**qat_kw) if kw.pop("qat", False) else None
    known = {f.name for f in fields(QuantizeRequest)}
    unknown = sorted(set(kw) - known)
    if unknown:
        raise UsageError(f"quantize: unknown option(s) {', '.join(unknown)}")
    if kw.get("nodes_to_exclude") is not None:
        kw["nodes_to_exclude"] = tuple(kw["nodes_to_exclude"])
    else:
        kw.pop("nodes_to_exclude", None)
    return QuantizeRequest(checkpoint=Path(checkpoint), bundle=Path(bundle), qat=qat, **kw)
