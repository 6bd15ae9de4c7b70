"""Finding and loading recipes and export profiles (a path, or a name looked up in the working directory and in
the folders shipped with rkd), dumping a resolved recipe, and resolving ``--device``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rkd.config.overrides import apply_overrides, format_validation_error, load_yaml
from rkd.config.schema import ExportProfile, Recipe
from rkd.config.values import SCHEMA_VERSION
from rkd.errors import RecipeError, UsageError
from rkd.registry import did_you_mean


def validate_recipe(raw: Any, source: str = "<recipe>") -> Recipe:
    """Validate a parsed recipe mapping; raise :class:`RecipeError` with a one-line message."""
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe is a YAML mapping of sections, got {type(raw).__name__}")
    if "schema_version" in raw and _wrong_schema(raw["schema_version"]):
        raise RecipeError(f"{source}: {_schema_problem(raw['schema_version'])}; upgrade rkd or migrate the recipe")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc, source)) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe: a file, or a shipped recipe's name (:func:`find_recipe`)."""
    p = find_recipe(path)
    raw = _read_yaml(p, "a recipe")
    if overrides:
        raw = apply_overrides(raw, overrides)
    return validate_recipe(raw, str(p))


PROFILE_DIRS = ("export",)
RECIPE_DIR = "recipes"
# The package folder holding the shipped copy of each top-level folder (package data of a wheel).
_PACKAGED = {"export": "profiles", "recipes": "recipes"}


def _wrong_schema(value: Any) -> bool:
    """Whether ``schema_version: value`` is not the integer this rkd reads (``true`` and ``1.0`` are not)."""
    return type(value) is not int or value != SCHEMA_VERSION


def _schema_problem(value: Any) -> str:
    """Why ``schema_version: value`` is refused (a quoted number is a string, not the version)."""
    if isinstance(value, str) and value.strip() == str(SCHEMA_VERSION):
        return f"schema_version is the string {value!r}; write the number {SCHEMA_VERSION} (no quotes)"
    return f"schema_version {value!r} is not supported by this rkd (it reads {SCHEMA_VERSION})"


def _read_yaml(p: Path, what: str) -> Any:
    try:
        raw = load_yaml(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{p}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{p}: not UTF-8 text; {what} is a YAML file") from None
    except IsADirectoryError:
        raise RecipeError(f"{p}: is a folder; give {what} file") from None
    if raw is None:
        raise RecipeError(f"{p}: the file is empty; {what} is a YAML mapping of sections")
    if not isinstance(raw, dict):
        raise RecipeError(f"{p}: {what} is a YAML mapping of sections, got {type(raw).__name__}")
    return raw


def shipped_folder(kind: str) -> Path | None:
    """The profiles (``kind="export"``) or recipes (``"recipes"``) shipped with rkd: the installed package's
    ``rkd/profiles`` or ``rkd/recipes`` (read with :mod:`importlib.resources`), else the ``export/`` or
    ``recipes/`` of the source tree rkd runs from (a checkout, an editable install); None when neither is there."""
    from importlib.resources import files

    packaged = files("rkd").joinpath(_PACKAGED[kind])
    if isinstance(packaged, Path) and packaged.is_dir():  # a zipped install has no folder to list
        return packaged
    here = Path(__file__).resolve()  # toolchain/rkd/config/loading.py in a source tree
    tree = here.parents[3]
    if here.parents[2].name == "toolchain" and (tree / "pyproject.toml").is_file() and (tree / kind).is_dir():
        return tree / kind
    return None


def _named(p: Path, folder: str) -> str | None:
    """The name in ``NAME``, ``NAME.yaml`` or ``<folder>/NAME.yaml`` (relative), else None."""
    if p.is_absolute() or p.suffix not in ("", ".yaml", ".yml"):
        return None
    if len(p.parts) == 1 or (len(p.parts) == 2 and p.parts[0] == folder):
        return p.stem if p.suffix else p.name
    return None


def _with_shipped(folders: list[Path], kind: str) -> list[Path]:
    shipped = shipped_folder(kind)
    if shipped is not None and all(f.resolve() != shipped.resolve() for f in folders if f.is_dir()):
        folders.append(shipped)
    return folders


def _find_named(name: str, folders: list[Path], what: str, shown: str) -> Path:
    for folder in folders:
        cand = folder / f"{name}.yaml"
        if cand.is_file():
            return cand
    names = sorted({f.stem for folder in folders if folder.is_dir() for f in folder.glob("*.yaml")})
    hint = did_you_mean(name, names)
    searched = ", ".join(f"{f}/" for f in folders)
    listing = f"; {what}s: {', '.join(names)}" if names else ""
    raise RecipeError(f"{what} '{shown}' not found in {searched}{hint}{listing} (or give a path to a .yaml)")


def profile_folders(base: str | Path | None = None) -> list[Path]:
    """Where named profiles are looked up, in order: ``export/`` under ``base`` (default: the current directory),
    then the profiles shipped with rkd (:func:`shipped_folder`), so a recipe runs from any directory."""
    return _with_shipped([Path(base or ".") / PROFILE_DIRS[0]], PROFILE_DIRS[0])


def find_profile(name_or_path: str | Path, base: str | Path | None = None) -> Path:
    """The profile file: a path as given, else ``<name>.yaml`` in the first of :func:`profile_folders` that has
    it. A missing ``NAME.yaml`` or ``export/NAME.yaml`` is looked up by name too."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if p.is_file():
            return p
        name = _named(p, PROFILE_DIRS[0])
        if name is None:
            raise RecipeError(f"{p}: export profile not found")
    else:
        name = p.name
    return _find_named(name, profile_folders(base), "export profile", str(name_or_path))


def recipe_folders() -> list[Path]:
    """Where a recipe given by name is looked up: ``recipes/`` in the current directory, then the recipes shipped
    with rkd (:func:`shipped_folder`)."""
    return _with_shipped([Path(RECIPE_DIR)], RECIPE_DIR)


def find_recipe(name_or_path: str | Path) -> Path:
    """The recipe file: a path that exists, else a name (``quickstart``, ``quickstart.yaml`` or
    ``recipes/quickstart.yaml``) looked up in :func:`recipe_folders`."""
    p = Path(name_or_path)
    if p.exists():
        return p
    name = _named(p, RECIPE_DIR)
    if name is None:
        raise RecipeError(f"{p}: recipe file not found")
    return _find_named(name, recipe_folders(), "recipe", str(name_or_path))


def load_profile(
    name_or_path: str | Path, base: str | Path | None = None, overrides: list[str] | None = None
) -> ExportProfile:
    """Read, override (``--set a.b=value``, :func:`apply_overrides`) and validate an export profile
    (``export/*.yaml``); one-line RecipeError on any problem."""
    p = find_profile(name_or_path, base)
    raw = _read_yaml(p, "an export profile")
    if overrides:
        raw = apply_overrides(raw, overrides)
    if "schema_version" in raw and _wrong_schema(raw["schema_version"]):
        raise RecipeError(f"{p}: {_schema_problem(raw['schema_version'])}")
    try:
        return ExportProfile.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc, str(p), ExportProfile)) from None


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML (written to each run directory)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def resolve_device(spec: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; a CUDA request without CUDA is an error (exit 3)."""
    import torch

    from rkd.errors import MissingDependencyError

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MissingDependencyError(f"device '{spec}' requested but no CUDA GPU is visible; use --device cpu")
        return spec
    if spec != "cpu":
        raise UsageError(f"unknown device '{spec}': use auto, cpu, cuda or cuda:N")
    return spec
