"""Recipes and profiles are read strictly: no coerced counts or thresholds, no key given twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from rkd.config import apply_overrides, load_profile, load_recipe, validate_recipe
from rkd.errors import RecipeError

BASE = {"name": "t", "deploy": {}, "verify": {"gates": ["clean_acc>=0"]}}
PROFILE = """schema_version: 1
name: p
runtime: onnxruntime
precision: fp32
verify:
  n: {n}
  attacks: pgd5
  gates: [clean_acc>=0]
"""


def _recipe_error(raw: dict) -> str:
    with pytest.raises(RecipeError) as exc:
        validate_recipe(raw, "r.yaml")
    assert "\n" not in str(exc.value)
    return str(exc.value)


@pytest.mark.parametrize(("section", "value", "where"), [
    ("verify", {"n": True}, "verify.n"),  # `n: yes` in YAML: once n = 1, a gate judged on one sample
    ("verify", {"n": 64.0}, "verify.n"),
    ("verify", {"n": "64"}, "verify.n"),
    ("verify", {"fail_on_warnings": "yes"}, "verify.fail_on_warnings"),
    ("deploy", {"calibration_n": True}, "deploy.calibration_n"),
    ("data", {"batch_size": 32.5}, "data.batch_size"),
    ("seed", True, "seed"),
    ("seed", -1, "seed"),
])
def test_counts_and_flags_are_not_coerced(section: str, value: object, where: str) -> None:
    raw = {**BASE, section: {**BASE.get(section, {}), **value} if isinstance(value, dict) else value}
    assert f"r.yaml: {where}:" in _recipe_error(raw)


@pytest.mark.parametrize("value", [True, "0.1"])
def test_thresholds_are_numbers(value: object) -> None:
    raw = {"name": "t", "teacher": {"model": {"name": "resnet18"}, "train": {"lr": value}}}
    assert "teacher.train.lr:" in _recipe_error(raw)


def test_yaml_spellings_of_numbers_still_read_as_numbers(tmp_path: Path) -> None:
    from rkd.config import load_yaml

    path = tmp_path / "r.yaml"
    path.write_text("name: t\nteacher:\n  model: {name: resnet18, width: 1}\n  train: {lr: 1e-3, epochs: 2}\n")
    rec = load_recipe(path)
    assert rec.teacher is not None and rec.teacher.train.lr == 0.001 and rec.teacher.model.width == 1.0
    assert load_recipe(path, ["teacher.train.weight_decay=2e-4"]).teacher.train.weight_decay == 2e-4
    assert load_yaml("a: 5.0e-4\nb: 10\nc: 8/255\n") == {"a": 5e-4, "b": 10, "c": "8/255"}


def test_a_profile_with_a_boolean_sample_count_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PROFILE.format(n="true"))
    with pytest.raises(RecipeError, match=r"p\.yaml: verify\.n: Input should be a valid integer \(got True\)"):
        load_profile(path)
    path.write_text(PROFILE.format(n="200"))
    assert load_profile(path).verify.n == 200


def test_a_key_given_twice_is_an_error(tmp_path: Path) -> None:
    from rkd.config import load_yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\nverify:\n  n: 1000\n  gates: [clean_acc>=0]\n  n: 10\ndeploy: {}\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(recipe)
    assert str(exc.value) == (f"{recipe}: not valid YAML at line 5: key 'n' is given twice (first at line 3); a "
                              "mapping holds one value per key: keep one")
    profile = tmp_path / "p.yaml"
    profile.write_text(PROFILE.format(n="1000") + "precision: int8\n")
    with pytest.raises(RecipeError, match="key 'precision' is given twice"):
        load_profile(profile)
    with pytest.raises(RecipeError, match="is given twice"):
        apply_overrides({}, ["verify={n: 1000, n: 10}"])
    # a merge key is no duplicate: the mapping's own key overrides the merged one, as YAML says
    assert load_yaml("base: &b {n: 1}\nv:\n  <<: *b\n  n: 2\n")["v"] == {"n": 2}
