"""Recipes: YAML validated by pydantic (``extra="forbid"``, ``schema_version``), with ``--set a.b=value`` overrides.

A recipe names what to build; every knob has a default documented here and in METHOD.md. A typo is a one-line
:class:`~rkd.errors.RecipeError` naming the file, the key path and the closest valid key.

The package splits by concept: :mod:`~rkd.config.values` (fractions, radii, the strict base model),
:mod:`~rkd.config.schema` (the recipe and export-profile models), :mod:`~rkd.config.overrides` (strict YAML,
``--set``, error messages) and :mod:`~rkd.config.loading` (finding and reading files); every public name is
importable from ``rkd.config``.
"""

from __future__ import annotations

from rkd.config.loading import (
    PROFILE_DIRS,
    RECIPE_DIR,
    dump_recipe,
    find_profile,
    find_recipe,
    load_profile,
    load_recipe,
    profile_folders,
    recipe_folders,
    resolve_device,
    shipped_folder,
    validate_recipe,
)
from rkd.config.overrides import StrictYamlLoader, apply_overrides, format_validation_error, load_yaml
from rkd.config.schema import (
    ADV_PATH_PRESETS,
    AdaadConfig,
    AdvPathConfig,
    ArdConfig,
    AttackConfig,
    DataConfig,
    DeployConfig,
    DistillMethodConfig,
    ExportProfile,
    Gates,
    IadConfig,
    ModelConfig,
    PgdAtConfig,
    ProfileEngine,
    ProfileQuantize,
    Recipe,
    RsladConfig,
    StudentConfig,
    TeacherConfig,
    TeacherMethodConfig,
    ThreatConfig,
    TradesConfig,
    TrainConfig,
    VerifyConfig,
)
from rkd.config.values import (
    SCHEMA_VERSION,
    Eps,
    Fraction,
    StrictModel,
    parse_eps,
    parse_fraction,
    parse_radius,
)

__all__ = [
    "ADV_PATH_PRESETS", "PROFILE_DIRS", "RECIPE_DIR", "SCHEMA_VERSION", "AdaadConfig", "AdvPathConfig", "ArdConfig",
    "AttackConfig", "DataConfig", "DeployConfig", "DistillMethodConfig", "Eps", "ExportProfile", "Fraction", "Gates",
    "IadConfig", "ModelConfig", "PgdAtConfig", "ProfileEngine", "ProfileQuantize", "Recipe", "RsladConfig",
    "StrictModel", "StrictYamlLoader", "StudentConfig", "TeacherConfig", "TeacherMethodConfig", "ThreatConfig",
    "TrainConfig", "TradesConfig", "VerifyConfig", "apply_overrides", "dump_recipe", "find_profile", "find_recipe",
    "format_validation_error", "load_profile", "load_recipe", "load_yaml", "parse_eps", "parse_fraction",
    "parse_radius", "profile_folders", "recipe_folders", "resolve_device", "shipped_folder", "validate_recipe",
]
