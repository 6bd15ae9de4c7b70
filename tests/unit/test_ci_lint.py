"""The CI example and the Dockerfiles as a user gets them: the workflow parses, follows GitHub Actions' rules
(caches saved after a failure, setup-python's pip cache keyed on a file that exists, checks: write for the JUnit
check, the CPU build of torch, actions pinned by commit) and passes `zizmor --offline` without a high finding;
the Dockerfiles pass hadolint and the GPU image installs rkd's own dependencies rather than a copied list.
The linters come with the `dev` extra; the tests that run them skip cleanly where they are missing."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "examples" / "ci" / "robustness-gate.yml"
DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))


def _tool(name: str) -> str:
    """The linter's executable: beside this Python (a virtual environment's bin/), else on PATH; or skip."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.is_file() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def _steps() -> list[dict]:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))["jobs"]["verify"]["steps"]


def test_the_workflow_parses_and_follows_github_actions_rules() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert workflow.get(True) or workflow.get("on")  # YAML 1.1 reads the key `on` as true
    job = workflow["jobs"]["verify"]
    assert job["permissions"]["checks"] == "write" and job["permissions"]["contents"] == "read"
    assert workflow["permissions"] == {}
    steps = job["steps"]
    uses = [s["uses"] for s in steps if "uses" in s]
    assert any(u.startswith("mikepenz/action-junit-report@") for u in uses)
    for line in WORKFLOW.read_text(encoding="utf-8").splitlines():  # pinned by commit, the release named
        if re.match(r"\s*(- )?uses:", line):
            assert re.search(r"@[0-9a-f]{40}\s+# v\d+(\.\d+)*$", line), line
    # actions/cache saves only after a successful job: restore and save are separate steps, the state's save
    # also after a failure or a cancel
    assert not [u for u in uses if re.match(r"actions/cache@", u)]
    saves = [s for s in steps if s.get("uses", "").startswith("actions/cache/save@")]
    restores = [s for s in steps if s.get("uses", "").startswith("actions/cache/restore@")]
    assert {s["with"]["path"] for s in saves} == {s["with"]["path"] for s in restores} == {"data", ".rkd-verify-state"}
    state_save = next(s for s in saves if s["with"]["path"] == ".rkd-verify-state")
    assert "cancelled()" in state_save["if"] and "failure()" in state_save["if"]
    state_restore = next(s for s in restores if s["with"]["path"] == ".rkd-verify-state")
    assert state_save["with"]["key"].startswith(state_restore["with"]["restore-keys"])
    assert "github.run_id" in state_save["with"]["key"]  # a key cannot be overwritten: one per attempt
    # setup-python's pip cache needs a file to key on (a requirements file by default)
    setup = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python@"))
    if setup["with"].get("cache") == "pip":
        assert setup["with"]["cache-dependency-path"] == ".github/workflows/robustness-gate.yml"
    install = next(s for s in steps if "pip install" in s.get("run", ""))
    assert "--index-url https://download.pytorch.org/whl/cpu" in install["run"]  # a CPU runner, CPU wheels
    verify = next(s for s in steps if "rkd verify" in s.get("run", ""))
    assert "--profile x86-cpu-int8" in verify["run"] and verify["timeout-minutes"] < job["timeout-minutes"]


def test_zizmor_finds_nothing_high_in_the_workflow() -> None:
    zizmor = _tool("zizmor")
    res = subprocess.run([zizmor, "--offline", "--format", "json", str(WORKFLOW)], capture_output=True, text=True,
                         timeout=120)
    findings = json.loads(res.stdout or "[]")
    high = [f"{f['ident']}: {f['desc']}" for f in findings if f["determinations"]["severity"] == "High"]
    assert not high, high


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes_the_dockerfiles(dockerfile: Path) -> None:
    hadolint = _tool("hadolint")
    res = subprocess.run([hadolint, "--no-color", "--failure-threshold", "warning", str(dockerfile)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_images_install_rkds_own_dependencies() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = set(project["optional-dependencies"])
    assert len(DOCKERFILES) == 2
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text(encoding="utf-8")
        installed = re.findall(r'pip install "?\.\[([a-z,]+)\]"?', text)
        assert installed and set(installed[0].split(",")) <= extras, dockerfile.name
        for requirement in project["dependencies"]:  # never a hand-copied list of them
            if not requirement.startswith(("torch>=", "torchvision>=")):  # the CPU index's torch, first
                assert requirement not in text, (dockerfile.name, requirement)
        # the package data is built from these folders: they must be in the image before the install
        install_at = text.index("RUN pip install")
        assert text.index("COPY export") < install_at and text.index("COPY recipes") < install_at, dockerfile.name
    gpu = (REPO / "docker" / "gpu.Dockerfile").read_text(encoding="utf-8")
    assert "--no-deps" not in gpu and "onnxruntime-gpu" in gpu and "pip uninstall -y onnxruntime" in gpu
