"""A plain install works: the wheel ships the export profiles and the recipes as package data, and the installed
rkd, run from an empty folder away from the source tree, verifies a bundle with `--profile x86-cpu-int8` (the CI
example's command) and runs a shipped recipe by its documented path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# What a wheel is built from: the packaging files, the package, and the folders shipped inside it.
SOURCES = ("pyproject.toml", "README.md", "toolchain", "export", "recipes")


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_package_of_the_tree_is_listed_for_the_wheel() -> None:
    tool = _pyproject()["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(REPO / "toolchain").parts)
             for p in (REPO / "toolchain" / "rkd").rglob("__init__.py")}
    shipped = {name for name in tool["package-dir"] if name}
    assert set(tool["packages"]) == found | shipped
    assert tool["package-dir"]["rkd.profiles"] == "export" and tool["package-dir"]["rkd.recipes"] == "recipes"


def _run(args: list[str], **kw: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    env.update(kw.pop("env", {}))  # type: ignore[arg-type]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel`` of a copy of the source tree (offline: no index, no build isolation)."""
    from importlib.metadata import PackageNotFoundError, version

    try:  # read, not imported: setuptools replaces distutils on import
        found = {name: version(name) for name in ("pip", "setuptools")}
    except PackageNotFoundError as exc:
        pytest.skip(f"building the wheel needs pip and setuptools: {exc.name} is not installed")
    if int(found["setuptools"].split(".")[0]) < 77:
        pytest.skip(f"building the wheel needs setuptools >= 77 (pyproject's build-system), "
                    f"found {found['setuptools']}")
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=ignore)
        else:
            shutil.copy2(REPO / name, src / name)
    res = _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index",
                "-w", str(root / "dist")])
    assert res.returncode == 0, res.stdout + res.stderr
    (whl,) = (root / "dist").glob("rkd-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel: Path) -> Path:
    """The wheel installed into a folder of its own (dependencies come from this environment)."""
    site = wheel.parent.parent / "site"
    res = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)])
    assert res.returncode == 0, res.stdout + res.stderr
    return site


def _rkd(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m rkd ARGS`` with only the installed copy of rkd importable (never the source tree)."""
    env = {"PYTHONPATH": str(site), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "COLUMNS": "200"}
    return _run([sys.executable, "-m", "rkd", *args], cwd=cwd, env=env)


def test_the_wheel_ships_every_profile_and_recipe(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for folder, packaged in (("export", "profiles"), ("recipes", "recipes")):
            files = sorted((REPO / folder).glob("*.yaml"))
            assert files
            assert {n for n in names if n.startswith(f"rkd/{packaged}/")} == {f"rkd/{packaged}/{f.name}" for f in files}
            for f in files:  # built from the top-level folders: the same bytes
                assert zf.read(f"rkd/{packaged}/{f.name}") == f.read_bytes(), f
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "rkd = rkd.cli.app:main" in zf.read(entry_points).decode()
    assert "rkd/py.typed" in names and "rkd/cli/app.py" in names
    assert not [n for n in names if n.startswith(("tests/", "export/", "recipes/", "toolchain/"))]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny INT8 bundle of a model trained on the synthetic data set (the manifest says so)."""
    from rkd.data import load_dataset
    from rkd.models import save_checkpoint
    from rkd.quantize.pipeline import quantize_checkpoint
    from rkd.testing import train_tiny_classifier

    root = tmp_path_factory.mktemp("wheel-bundle")
    classes = list(load_dataset("synthetic", "test").classes)
    meta = {"data": {"dataset": "synthetic", "options": {}, "classes": classes},
            "threat": {"norm": "linf", "eps": 8 / 255, "alpha": 2 / 255}}
    ckpt = save_checkpoint(train_tiny_classifier(), root / "student.safetensors", metadata=meta)
    quantize_checkpoint(ckpt, root / "bundle", calib_n=128, eval_n=0)
    return root / "bundle"


@pytest.mark.slow
def test_the_installed_rkd_verifies_with_a_shipped_profile_from_an_empty_folder(
    installed: Path, bundle: Path, tmp_path: Path
) -> None:
    where = _run([sys.executable, "-c", "import rkd, rkd.config as c; print(rkd.__file__); "
                  "print(c.shipped_folder('export')); print(c.shipped_folder('recipes'))"],
                 cwd=tmp_path, env={"PYTHONPATH": str(installed)})
    assert where.returncode == 0, where.stderr
    module, profiles, recipes = where.stdout.split()
    assert Path(module).is_relative_to(installed), module  # the wheel's copy, not the source tree
    assert Path(profiles) == installed / "rkd" / "profiles" and Path(recipes) == installed / "rkd" / "recipes"

    # the CI example's command, without --data: the manifest's synthetic data set, the shipped profile's gates
    # (which hold no floor: the CI example adds one, this tiny model has none to keep)
    res = _rkd(installed, tmp_path, "verify", "--engine", str(bundle / "model.int8.onnx"), "--profile",
               "x86-cpu-int8", "--attacks", "fgsm", "--allow-no-floor", "--report", "rkd-report", "--junit",
               "rkd-report/junit.xml")
    assert res.returncode in (0, 1), res.stdout + res.stderr  # a verdict, not a usage error
    report = json.loads((tmp_path / "rkd-report" / "verify.json").read_text())
    assert report["profile"]["name"] == "x86-cpu-int8" and report["n"] == 1000
    assert {g["source"] for g in report["gates"]} == {"profile x86-cpu-int8"} and len(report["gates"]) == 3
    assert report["data"]["dataset"] == "synthetic" and report["data"]["source"] == "the bundle's manifest"
    assert (tmp_path / "rkd-report" / "junit.xml").is_file()


@pytest.mark.slow
def test_the_installed_rkd_runs_a_shipped_recipe_from_an_empty_folder(installed: Path, tmp_path: Path) -> None:
    res = _rkd(installed, tmp_path, "run", "recipes/smoke.yaml", "--out", "run", "--set", "teacher.train.epochs=1",
               "--set", "student.train.epochs=1", "--set", "verify.attacks=fgsm")
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing but the run directory was written
    record = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]
    assert set(record) == {"teacher", "distill", "export", "quantize", "verify"}
    report = json.loads((tmp_path / "run" / "verify" / "verify.json").read_text())
    assert report["profile"]["name"] == "x86-cpu-int8" and report["passed"]
    missing = _rkd(installed, tmp_path, "run", "smok")
    assert missing.returncode == 2 and "did you mean 'smoke'" in " ".join((missing.stderr + missing.stdout).split())
