"""Recipe schema: validation, one-line errors with did-you-mean, overrides, fractions."""

from __future__ import annotations

from pathlib import Path

import pytest

from rkd.config import apply_overrides, load_recipe, parse_eps, parse_fraction, validate_recipe
from rkd.errors import RecipeError

REPO = Path(__file__).resolve().parents[2]
BASE = {"name": "t", "teacher": {"model": {"name": "resnet18"}}}


def _err(raw: dict, source: str = "r.yaml") -> str:
    with pytest.raises(RecipeError) as exc:
        validate_recipe(raw, source)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_defaults_follow_method_md() -> None:
    rec = validate_recipe(BASE)
    assert rec.threat.eps == pytest.approx(8 / 255) and rec.threat.alpha == pytest.approx(2 / 255)
    assert rec.teacher is not None and rec.teacher.method.name == "pgd_at" and rec.teacher.method.steps == 10
    assert rec.teacher.train.resolved_milestones() == [100, 150]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({**BASE, "teacher": {"model": {"name": "resnet18"}, "trian": {}}},
         "teacher.trian: unknown key (did you mean 'train'?)"),
        ({**BASE, "teacher": {"model": {"name": "resnet18"}, "method": {"name": "trades", "bta": 1}}},
         "teacher.method.bta: unknown key (did you mean 'beta'?)"),
        ({**BASE, "teacher": {"model": {"name": "resnet18"}, "method": {"name": "pgd_at", "beta": 6}}},
         "teacher.method.beta: unknown key"),
        ({**BASE, "teacher": {"model": {"name": "resnet18"}, "method": {"name": "tardes"}}},
         "teacher.method.name: unknown method 'tardes' (did you mean 'trades'?)"),
        ({**BASE, "threat": {"eps": 9}}, "threat.eps: must be in (0, 1]"),
        ({**BASE, "seeed": 1}, "seeed: unknown key (did you mean 'seed'?)"),
        ({**BASE, "teacher": {"model": {"name": "resnet18"}, "train": {"lr": "fast"}}}, "teacher.train.lr:"),
    ],
)
def test_errors_name_file_path_and_closest_key(raw: dict, expected: str) -> None:
    msg = _err(raw)
    assert msg.startswith("r.yaml: ")
    assert expected in msg


def test_method_without_a_name_says_so() -> None:
    msg = _err({**BASE, "teacher": {"model": {"name": "x"}, "method": {"beta": 3}}})
    assert "teacher.method.name: missing" in msg


def test_schema_version_mismatch() -> None:
    assert "schema_version 2" in _err({**BASE, "schema_version": 2})
    assert "write the number 1 (no quotes)" in _err({**BASE, "schema_version": "1"})


def test_fraction_parsing() -> None:
    assert parse_fraction("8/255") == pytest.approx(8 / 255)
    assert parse_fraction(0.5) == 0.5
    with pytest.raises(ValueError):
        parse_fraction("8/0")
    with pytest.raises(ValueError):
        parse_eps("0")
    with pytest.raises(ValueError):
        parse_fraction(True)


def test_overrides_set_nested_values_and_keep_fraction_strings() -> None:
    raw = apply_overrides(BASE, ["teacher.train.epochs=3", "threat.eps=4/255", "teacher.method.name=trades"])
    rec = validate_recipe(raw)
    assert rec.teacher is not None and rec.teacher.train.epochs == 3 and rec.teacher.method.name == "trades"
    assert rec.threat.eps == pytest.approx(4 / 255)
    assert BASE["teacher"] == {"model": {"name": "resnet18"}}  # the input is not mutated


def test_override_typo_is_caught_by_validation(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("name: t\nteacher:\n  model: {name: resnet18}\n")
    with pytest.raises(RecipeError, match=r"teacher.train.epoch: unknown key \(did you mean 'epochs'\?\)"):
        load_recipe(p, ["teacher.train.epoch=3"])
    with pytest.raises(RecipeError, match="KEY.PATH=VALUE"):
        load_recipe(p, ["teacher.train.epochs"])
    with pytest.raises(RecipeError, match="is a value, not a section"):
        load_recipe(p, ["name.x=1"])


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML at line"):
        load_recipe(p)
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_in_the_repo_validates(path: Path) -> None:
    rec = load_recipe(path)
    assert rec.name == path.stem


@pytest.mark.parametrize("path", sorted((REPO / "export").glob("*.yaml")), ids=lambda p: p.name)
def test_every_export_profile_in_the_repo_validates(path: Path) -> None:
    from rkd.config import load_profile

    profile = load_profile(path)
    assert profile.name == path.stem
    assert profile.verify.gates, "a deployment profile without gates gates nothing"
    assert (profile.quantize is not None) == (profile.precision == "int8")


def test_profile_errors_are_one_line_with_the_closest_key(tmp_path: Path) -> None:
    from rkd.config import load_profile

    bad = tmp_path / "p.yaml"
    bad.write_text("name: p\nruntime: onnxruntime\nprecision: int8\nquantize: {scheme: cpu, methd: minmax}\n")
    with pytest.raises(RecipeError, match=r"p.yaml: quantize.methd: unknown key \(did you mean 'method'\?\)"):
        load_profile(bad)
    bad.write_text("name: p\nruntime: tensorrt\nprecision: int8\nquantize: {scheme: cpu}\nengine: {}\n")
    with pytest.raises(RecipeError, match="symmetric INT8 only"):
        load_profile(bad)
    bad.write_text("name: p\nruntime: onnxruntime\nprecision: fp32\nverify: {gates: ['robust_acc=>0.4']}\n")
    with pytest.raises(RecipeError, match="not METRIC OP VALUE"):
        load_profile(bad)
    with pytest.raises(RecipeError, match="did you mean 'gpu-int8'"):
        load_profile("gpu-int9", base=REPO)


def test_set_into_a_missing_method_section_keeps_the_default_method(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("name: r\nteacher: {model: {name: resnet18}}\nstudent: {model: {name: resnet18}}\n")
    rec = load_recipe(p, ["teacher.method.steps=2", "student.method.steps=3"])
    assert (rec.teacher.method.name, rec.teacher.method.steps) == ("pgd_at", 2)
    assert (rec.student.method.name, rec.student.method.steps) == ("adv_path", 3)


def test_iad_warmup_longer_than_the_run_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("name: r\nstudent: {model: {name: resnet18}, method: {name: iad}, train: {epochs: 5}}\n")
    with pytest.raises(RecipeError, match=r"warmup_epochs \(60\) >= train.epochs \(5\).*never leave"):
        load_recipe(p)
    assert load_recipe(p, ["student.method.warmup_epochs=2"]).student.method.warmup_epochs == 2


def test_a_named_profile_comes_from_the_users_export_folder_else_the_shipped_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rkd.config import find_profile, load_profile, shipped_folder

    shipped = shipped_folder("export")
    assert shipped is not None and (shipped / "x86-cpu-int8.yaml").is_file()
    monkeypatch.chdir(tmp_path)  # an empty folder: the shipped copy, by name or by its documented path
    assert find_profile("x86-cpu-int8") == shipped / "x86-cpu-int8.yaml"
    assert find_profile("export/x86-cpu-int8.yaml") == shipped / "x86-cpu-int8.yaml"
    with pytest.raises(RecipeError, match=r"export profile 'export/nope.yaml' not found in export/, .*x86-cpu-int8"):
        find_profile("export/nope.yaml")
    with pytest.raises(RecipeError, match=r"mine/x86-cpu-int8.yaml: export profile not found"):
        find_profile("mine/x86-cpu-int8.yaml")  # a path elsewhere is a path, never a name
    own = tmp_path / "export" / "x86-cpu-int8.yaml"  # the user's own folder wins
    own.parent.mkdir()
    own.write_text((shipped / "x86-cpu-int8.yaml").read_text()
                   .replace("drop.robust_acc<=0.03", "drop.robust_acc<=0.01"))
    assert find_profile("x86-cpu-int8") == Path("export") / "x86-cpu-int8.yaml"
    assert "drop.robust_acc<=0.01" in load_profile("x86-cpu-int8").verify.gates
    assert find_profile("gpu-int8") == shipped / "gpu-int8.yaml"  # names it lacks still come from rkd


def test_a_recipe_is_a_file_or_a_shipped_recipes_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rkd.config import find_recipe, shipped_folder

    shipped = shipped_folder("recipes")
    assert shipped is not None and (shipped / "smoke.yaml").is_file()
    monkeypatch.chdir(tmp_path)
    for name in ("smoke", "smoke.yaml", "recipes/smoke.yaml"):
        assert find_recipe(name) == shipped / "smoke.yaml", name
    assert load_recipe("quickstart", ["verify.n=1000"]).name == "quickstart"
    with pytest.raises(RecipeError, match=r"recipe 'smok' not found in recipes/, .*did you mean 'smoke'"):
        find_recipe("smok")
    with pytest.raises(RecipeError, match=r"other/smoke.yaml: recipe file not found"):
        find_recipe("other/smoke.yaml")
    own = tmp_path / "recipes" / "smoke.yaml"  # the user's recipes/ folder wins for a name
    own.parent.mkdir()
    own.write_text("name: smoke\nteacher: {model: {name: resnet18}}\n")
    assert find_recipe("smoke") == Path("recipes") / "smoke.yaml"
    assert load_recipe("smoke").student is None
    mine = tmp_path / "quickstart.yaml"  # an existing file is taken as it is
    mine.write_text("name: mine\n")
    assert load_recipe("quickstart.yaml").name == "mine"


def test_the_source_tree_serves_its_own_profiles_and_recipes() -> None:
    import rkd
    from rkd.config import shipped_folder

    if not Path(rkd.__file__).resolve().is_relative_to(REPO / "toolchain"):
        pytest.skip("rkd is installed from a wheel here (tests/integration/test_wheel.py covers that)")
    assert shipped_folder("export") == REPO / "export" and shipped_folder("recipes") == REPO / "recipes"
