"""Typed errors with actionable one-line messages and the CLI exit code each maps to.

Exit codes (docs/reference/exit-codes.md, DESIGN.md): 0 pass, 1 gate failed, 2 usage or recipe error, 3 backend or
hardware missing, 4 internal error.
"""

from __future__ import annotations


class RkdError(Exception):
    """Base of every error rkd raises on purpose. ``exit_code`` is what the CLI exits with."""

    exit_code: int = 4


class UsageError(RkdError):
    """Bad input from the user: a wrong option value, a bad path, an unknown name."""

    exit_code = 2


class RecipeError(UsageError):
    """A recipe that does not validate (unknown key, wrong type, bad value)."""


class CheckpointError(UsageError):
    """A checkpoint that is missing, corrupt or does not match the model it is loaded into."""


class UnsupportedOperatorError(CheckpointError):
    """An ONNX model with operators the gradient interpreter cannot differentiate; ``ops`` lists their types
    (sorted), ``counts`` and ``first_nodes`` give, per type, how many nodes use it and the first one's name."""

    def __init__(self, message: str, ops: list[str] | None = None, counts: dict[str, int] | None = None,
                 first_nodes: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.ops: list[str] = sorted(ops or [])
        self.counts: dict[str, int] = dict(counts or {})
        self.first_nodes: dict[str, str] = dict(first_nodes or {})


class DataError(UsageError):
    """A data set that cannot be found or read."""


class MissingDependencyError(RkdError):
    """An optional backend (tensorrt, a CUDA GPU) that this machine lacks."""

    exit_code = 3


class TrainingDiverged(RkdError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 4
