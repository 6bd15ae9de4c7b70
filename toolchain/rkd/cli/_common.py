"""Shared CLI plumbing: the console, error-to-exit-code mapping, progress display."""

from __future__ import annotations

import contextlib
import logging
import os
import traceback
from collections.abc import Iterator
from typing import Any

import typer
from rich.console import Console
from rich.errors import LiveError
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from rkd.errors import RkdError

console = Console(stderr=True)
out = Console()
STATE = {"debug": False}

@contextlib.contextmanager
def handle_errors() -> Iterator[None]:
    """Map rkd errors to one line on stderr and their exit code; anything else is an internal error (4). With
    ``--debug`` the traceback comes first, and the exit code stays the same (1 means only a failed gate). Long
    evaluation work inside shows its progress (:class:`AttackProgress`)."""
    try:
        from rkd.progress import reporting

        with reporting(AttackProgress()):
            yield
    except typer.Exit:
        raise
    except RkdError as exc:
        if STATE["debug"]:
            traceback.print_exc()
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, exit 4
        if STATE["debug"]:
            traceback.print_exc()
        console.print(
            f"[bold red]internal error:[/] {exc.__class__.__name__}: {escape(str(exc))} "
            "(rerun with --debug for the traceback)",
            highlight=False, soft_wrap=True,
        )
        raise typer.Exit(4) from None


def setup_logging(verbose: bool) -> None:
    """Library loggers to stderr through Rich (warnings by default, info with --verbose)."""
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)], force=True,
    )


class RichProgress:
    """A :class:`rkd.train.ProgressSink` showing a bar with ETA and live loss/accuracy."""

    def __init__(self) -> None:
        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]} acc {task.fields[acc]} {task.fields[ips]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=console,
        )
        self._task = None
        self._epochs = 0

    def on_start(self, *, total_steps: int, done_steps: int, epochs: int) -> None:  # noqa: D102
        self._progress.start()
        self._task = self._progress.add_task(
            "train", total=total_steps, completed=done_steps, epoch=f"-/{epochs}", loss="-", acc="-", ips=""
        )
        self._epochs = epochs

    def on_step(self, *, step: int, epoch: int, metrics: dict[str, float]) -> None:  # noqa: D102
        fields: dict[str, str] = {"epoch": f"{epoch}/{self._epochs}"}
        if metrics:
            fields |= {"loss": f"{metrics['loss']:.3f}", "acc": f"{metrics['train_acc']:.1%}",
                       "ips": f"{metrics['img_per_s']:.0f} img/s"}
            if not self._progress.console.is_terminal:  # logs and CI: a plain line instead of a live bar
                self._progress.console.print(
                    f"epoch {fields['epoch']} step {step}: loss {fields['loss']} train acc {fields['acc']} "
                    f"{fields['ips']} lr {metrics['lr']:.4g}", highlight=False,
                )
        if self._task is not None:
                self._progress.update(self._task, completed=step, **fields)

    def on_event(self, message: str) -> None:  # noqa: D102
        self._progress.console.print(message, highlight=False)

    def on_end(self) -> None:  # noqa: D102
        self._progress.stop()


PROGRESS_INTERVAL_ENV = "RKD_PROGRESS_INTERVAL"
DEFAULT_PROGRESS_INTERVAL_S = 30.0


def progress_interval() -> float:
    """Seconds between plain progress lines without a terminal: ``$RKD_PROGRESS_INTERVAL`` (default 30; 0 prints
    a line for every batch).

    Raises:
        UsageError: the variable is not a number >= 0.
    """
    from rkd.errors import UsageError

    text = os.environ.get(PROGRESS_INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_PROGRESS_INTERVAL_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0.0 or value == float("inf"):
        raise UsageError(f"{PROGRESS_INTERVAL_ENV} must be a number of seconds >= 0, got {text!r}; unset it for "
                         f"the default ({DEFAULT_PROGRESS_INTERVAL_S:g} s)")
    return value


class AttackProgress:
    """A :class:`rkd.progress.WorkProgress` for the console (stderr): a Rich bar per attack with samples done,
    robust so far, elapsed time and ETA on a terminal; otherwise (logs, CI) a plain line at most every
    :func:`progress_interval` seconds while an attack runs."""

    def __init__(self, console_: Console | None = None, interval: float | None = None) -> None:
        self._console = console_ or console
        self._interval = progress_interval() if interval is None else interval
        self._progress: Progress | None = None
        self._task: Any = None
        self._label, self._total, self._t0, self._last = "", 0, 0.0, 0.0

    def start(self, label: str, total: int) -> None:  # noqa: D102
        import time

        self.end()
        self._label, self._total = label, total
        self._t0 = self._last = time.monotonic()
        if self._console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("robust {task.fields[robust]}"), TimeElapsedColumn(), TextColumn("eta"),
                TimeRemainingColumn(), console=self._console, transient=True,
            )
            try:
                self._progress.start()
            except LiveError:  # another display is live (a training bar around a held-out evaluation): stay quiet
                self._progress = None
                return
            self._task = self._progress.add_task(label, total=total, robust="-")

    def advance(self, done: int, robust: int) -> None:  # noqa: D102
        import time

        if self._progress is not None:
            self._progress.update(self._task, completed=done, robust=f"{robust}/{done}")
            return
        if self._console.is_terminal:
            return
        now = time.monotonic()
        if now - self._last < self._interval or done >= self._total:
            return
        self._last = now
        elapsed = now - self._t0
        eta = f", eta {elapsed / done * (self._total - done):.0f} s" if done else ""
        self._console.print(f"{self._label}: {done}/{self._total} samples, robust {robust}/{done}, "
                            f"{elapsed:.0f} s{eta}", highlight=False, soft_wrap=True)

    def end(self) -> None:  # noqa: D102
        if self._progress is not None:
            self._progress.stop()
        self._progress = self._task = None


def render_train_result(title: str, result: Any) -> None:
    """The summary table of a finished training run (``rkd teacher``, ``rkd distill``)."""
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_row("checkpoint", str(result.checkpoint))
    if result.best_checkpoint:
        table.add_row("best (held-out PGD)", str(result.best_checkpoint))
    if result.history:
        last = result.history[-1]
        for key, value in last.items():
            if key.endswith("_acc"):
                table.add_row(f"held-out {key}", f"{value:.2%} (n={last['n']})")
    table.add_row("time", f"{result.seconds:.0f} s")
    out.print(table)


def human_size(n: int) -> str:
    """A byte count as B, KiB, MiB or GiB."""
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def class_table(by_class: dict[str, Any], *, title: str) -> Any:
    """A report's ``by_class`` section as a Rich table (the rows of :func:`rkd.verify.report.class_rows`)."""
    from rich.table import Table

    from rkd.verify.report import class_rows

    header, rows = class_rows(by_class)
    table = Table(title=title)
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(escape(row[0]), *row[1:])
    return table
