"""Progress of long evaluation work (attacks over many samples), reported without printing.

Library code reports through a :class:`WorkProgress` sink: ``start(label, total)`` when a unit of work begins
(one attack, one AutoAttack sub-attack, one PGD restart), ``advance(done, robust)`` with cumulative counts as
batches finish, ``end()`` when it stops. The sink is passed explicitly (``evaluate_robustness(progress=...)``) or
installed for a block with :func:`reporting`; code deeper down reads it with :func:`active` and gets a sink that
drops everything when none is installed. The CLI installs a Rich bar (a plain line every few seconds without a
terminal); tests install a recorder. Training keeps its own :class:`rkd.train.ProgressSink` (epochs, loss).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Protocol


class WorkProgress(Protocol):
    """Receives the progress of one unit of work at a time; counts are cumulative within the unit."""

    def start(self, label: str, total: int) -> None:
        """A unit of work on ``total`` samples begins."""

    def advance(self, done: int, robust: int) -> None:
        """``done`` of ``total`` samples are finished, ``robust`` of those withstood the attack so far."""

    def end(self) -> None:
        """The unit of work stopped (finished or not)."""


class NullWorkProgress:
    """A sink that drops everything (the default)."""

    def start(self, label: str, total: int) -> None:  # noqa: D102
        pass

    def advance(self, done: int, robust: int) -> None:  # noqa: D102
        pass

    def end(self) -> None:  # noqa: D102
        pass


_NULL = NullWorkProgress()
_ACTIVE: contextvars.ContextVar[WorkProgress | None] = contextvars.ContextVar("rkd_work_progress", default=None)


def active() -> WorkProgress:
    """The sink installed by the innermost :func:`reporting`, else one that drops everything."""
    return _ACTIVE.get() or _NULL


@contextlib.contextmanager
def reporting(sink: WorkProgress | None) -> Iterator[WorkProgress]:
    """Install ``sink`` for the block (None keeps the one already installed); yields the sink in force."""
    if sink is None:
        yield active()
        return
    token = _ACTIVE.set(sink)
    try:
        yield sink
    finally:
        _ACTIVE.reset(token)


@contextlib.contextmanager
def unit(label: str, total: int, sink: WorkProgress | None = None) -> Iterator[WorkProgress]:
    """``start`` a unit of work on ``sink`` (default: :func:`active`) and ``end`` it however the block exits."""
    sink = sink or active()
    sink.start(label, total)
    try:
        yield sink
    finally:
        sink.end()


class _Prefixed:
    """Passes everything on to ``inner``, with ``prefix`` in front of each label."""

    def __init__(self, prefix: str, inner: WorkProgress) -> None:
        self.prefix, self.inner = prefix, inner

    def start(self, label: str, total: int) -> None:  # noqa: D102
        self.inner.start(self.prefix + label, total)

    def advance(self, done: int, robust: int) -> None:  # noqa: D102
        self.inner.advance(done, robust)

    def end(self) -> None:  # noqa: D102
        self.inner.end()


@contextlib.contextmanager
def labelled(prefix: str) -> Iterator[WorkProgress]:
    """Within the block, the sink in force sees every label with ``prefix`` in front (e.g. which model, which
    eps)."""
    with reporting(_Prefixed(prefix, active())) as sink:
        yield sink
