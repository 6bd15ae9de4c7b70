"""The worked example of docs/API.md runs as written (in an empty folder, on synthetic data) and ends with a
verdict; the guide names every function rkd.api exports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "API.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_the_guide_has_one_example_and_names_every_function() -> None:
    from rkd import api

    assert len(_python_blocks()) == 1
    text = DOC.read_text(encoding="utf-8")
    for name in ("teacher", "distill", "run", "quantize", "export", "evaluate", "verify"):
        assert callable(getattr(api, name)) and f"`{name}`" in text, name


def test_the_worked_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_python_blocks()[0], str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    result = namespace["result"]
    assert (tmp_path / "verify-report" / "verify.json").is_file()
    assert result.paths["json"] == Path("verify-report") / "verify.json"
    assert result.report["n"] == 32 and set(result.report["attacks"]) >= {"fgsm", "pgd2"}
    assert result.passed == (result.exit_code == 0) and result.verdict in capsys.readouterr().out
    section = namespace["quantized"].section
    assert (namespace["quantized"].bundle / "model.int8.onnx").is_file() and section["evaluation"]["data"]["n"] == 32
