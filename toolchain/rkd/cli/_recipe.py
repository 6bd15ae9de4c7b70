"""The options the recipe commands (``teacher``, ``distill``, ``run``) share, as Typer reads them."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

Device = Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N \\[default: the recipe's].")]
DataRoot = Annotated[
    Optional[str], typer.Option("--data-root", help="Where data sets are downloaded or found \\[default: "
                                "data.root, else $RKD_DATA_ROOT, else ~/.cache/rkd/data].")
]
#: ``--resume`` of a command that trains one section of a recipe (``teacher``, ``distill``).
Resume = Annotated[bool, typer.Option("--resume", help="Continue a killed run from its last checkpoint.")]


def recipe_argument(section: str) -> Any:
    """The ``RECIPE`` argument of a command that runs the recipe's ``section``."""
    return typer.Argument(metavar="RECIPE", help=f"Recipe YAML with a '{section}' section, or a shipped recipe's "
                          "name.", show_default=False)


def set_option(section: str) -> Any:
    """``--set``, its help naming one of the recipe ``section``'s keys."""
    return typer.Option("--set", help=f"Override a recipe key: --set {section}.train.epochs=1.")


def out_option(section: str) -> Any:
    """``--out`` of a command that trains the recipe's ``section`` (by default into runs/<recipe name>/SECTION)."""
    return typer.Option("--out", help=f"Run directory \\[default: runs/<recipe name>/{section}].")
