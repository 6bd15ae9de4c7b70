"""The CLI's fixed choices, shared by the commands (Typer shows each as ``[a|b]`` and refuses anything else)."""

from __future__ import annotations

from enum import Enum


def _choice(name: str, doc: str, *values: str) -> type[Enum]:
    """A ``str`` Enum whose members are named by their values (what Typer reads and prints)."""
    cls = Enum(name, {v: v for v in values}, type=str, module=__name__)  # type: ignore[misc]
    cls.__doc__ = doc
    return cls


Norm = _choice("Norm", "The attacks' ball.", "linf", "l2")
Sample = _choice("Sample", "Which samples: the first n, or a seeded random subset.", "first", "random")
Layout = _choice("Layout", "A model's input layout.", "nchw", "nhwc")
Channels = _choice("Channels", "A model's channel order.", "rgb", "bgr")
