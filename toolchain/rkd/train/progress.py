"""How the loop reports progress without printing: the CLI plugs a Rich display into this protocol."""

from __future__ import annotations

from typing import Protocol


class ProgressSink(Protocol):
    """Receives the loop's progress; the library never prints."""

    def on_start(self, *, total_steps: int, done_steps: int, epochs: int) -> None:
        """The run starts (``done_steps`` > 0 when resumed)."""

    def on_step(self, *, step: int, epoch: int, metrics: dict[str, float]) -> None:
        """A step finished; ``metrics`` holds running loss/accuracy (updated every ``log_every`` steps)."""

    def on_event(self, message: str) -> None:
        """A one-line event: evaluation results, a checkpoint written, a resume."""

    def on_end(self) -> None:
        """The run ended (normally or not)."""


class NullProgress:
    """A sink that drops everything (library use, tests)."""

    def on_start(self, *, total_steps: int, done_steps: int, epochs: int) -> None:  # noqa: D102
        pass

    def on_step(self, *, step: int, epoch: int, metrics: dict[str, float]) -> None:  # noqa: D102
        pass

    def on_event(self, message: str) -> None:  # noqa: D102
        pass

    def on_end(self) -> None:  # noqa: D102
        pass
