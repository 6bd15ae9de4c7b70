"""A small name -> factory registry with a did-you-mean error (timm's ``register_model``, made local)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from rkd.errors import UsageError

T = TypeVar("T")


def closest(name: str, choices: list[str] | tuple[str, ...] | set[str]) -> str | None:
    """The closest of ``choices`` to ``name`` (difflib), or None when nothing is close."""
    matches = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(name: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    """A ``" (did you mean 'x'?)"`` suffix, or ``""`` when no choice is close."""
    match = closest(name, choices)
    return f" (did you mean '{match}'?)" if match else ""


class Registry(Generic[T]):
    """Maps stable lowercase names to objects (factories or classes).

    Example:
        >>> MODELS = Registry("model")
        >>> @MODELS.register("resnet18")
        ... def resnet18(**kw): ...
        >>> MODELS.get("resnet18")
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; registering a name twice is an error."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """The object registered under ``name``; an unknown name raises UsageError naming the choices."""
        try:
            return self._items[name]
        except KeyError:
            raise UsageError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self.names())}; "
                f"choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
