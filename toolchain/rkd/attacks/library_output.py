"""pyautoattack's output routed into rkd's logging: its ``auto-attack`` logger (warnings collected as messages)
and whatever it prints to stdout (Square's notes, verbose sub-attacks), which must never mix with rkd's own output
on stdout. Both go to :mod:`rkd.attacks.autoattack`'s logger: INFO lines are shown with ``rkd -v``."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

logger = logging.getLogger("rkd.attacks.autoattack")

LIBRARY_LOGGER = "auto-attack"


class _LibraryLogCapture(logging.Handler):
    """Collects the library's warnings (also forwarded to ``log``); every line goes to this module's logger."""

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
            if self.log is not None:
                self.log(msg)
        else:  # the library's progress: rkd's log at INFO (``rkd -v``), not the caller's progress lines
            logger.info("AutoAttack: %s", msg)


@contextmanager
def captured_library_logs(messages: list[str], log: Callable[[str], None] | None) -> Iterator[None]:
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


class _LineLogger(io.TextIOBase):
    """A text stream that sends each written line to this module's logger at INFO."""

    def __init__(self) -> None:
        self._buffer = ""

    def writable(self) -> bool:  # noqa: D102
        return True

    def write(self, text: str) -> int:  # noqa: D102
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            if line.strip():
                logger.info("AutoAttack: %s", line.rstrip())
        return len(text)

    def flush(self) -> None:  # noqa: D102
        if self._buffer.strip():
            logger.info("AutoAttack: %s", self._buffer.rstrip())
        self._buffer = ""


@contextmanager
def stdout_to_log() -> Iterator[None]:
    """What pyautoattack prints (Square's notes, verbose sub-attacks) goes to the log, never to stdout."""
    stream = _LineLogger()
    with contextlib.redirect_stdout(stream):
        try:
            yield
        finally:
            stream.flush()
