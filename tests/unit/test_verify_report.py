"""verify.md and the JUnit XML show what verify.json records about preprocessing and white-box attacks."""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree as ET

import pytest

from rkd.verify.report import junit_xml, markdown, preprocessing_text, white_box_text

PRE = {"scale": 255.0, "mean": [103.53, 116.28, 123.675], "std": [57.375, 57.12, 58.395], "layout": "nhwc",
       "channels": "bgr"}
RAN = {"ran": True, "attacks": ["pgd"], "gradients_from": "onnx-qdq-interpreter",
       "gradient_rules": "rounding: straight-through", "why_not": None}
NOT_RAN = {"ran": False, "attacks": [], "gradients_from": None, "gradient_rules": None,
           "why_not": "no gradients: Einsum is not supported"}


def _report(**extra: Any) -> dict[str, Any]:
    acc = {"acc": 0.5, "ci95": [0.3, 0.7]}
    return {"artifact": {"file": "model.int8.onnx", "kind": "onnx", "runtime": "onnxruntime"}, "n": 16,
            "eps": 4 / 255, "eps_text": "4/255", "norm": "Linf", "seed": 0, "verdict": "no gates", "passed": True,
            "attacks": {"pgd": acc}, "worst_case": acc, "gates": [], "timing": {"total_s": 1.0}, **extra}


def _props(xml: str) -> dict[str, str]:
    root = ET.fromstring(xml.split("\n", 1)[1])
    return {p.get("name"): p.get("value") for p in root.iter("property")}  # type: ignore[misc]


def test_stated_preprocessing_and_white_box_attacks_show_in_markdown_and_junit() -> None:
    rep = _report(preprocessing=PRE, white_box=RAN)
    md = markdown(rep)
    pre = "BGR, x*255, mean (103.5, 116.3, 123.7), std (57.38, 57.12, 58.4), NHWC"
    assert preprocessing_text(PRE) == pre
    assert f"Preprocessing in front of the model: {pre}." in md
    assert "White-box attacks: ran (pgd) with gradients from onnx-qdq-interpreter; gradient rules: rounding" in md
    props = _props(junit_xml(rep))
    assert props["preprocessing"] == pre
    assert props["white_box"].startswith("ran (pgd) with gradients from onnx-qdq-interpreter")


def test_why_no_white_box_attack_ran_is_shown() -> None:
    rep = _report(preprocessing=None, white_box=NOT_RAN)
    md = markdown(rep)
    assert "White-box attacks: none ran: no gradients: Einsum is not supported." in md
    assert "Preprocessing in front of the model" not in md
    props = _props(junit_xml(rep))
    assert props["white_box"] == "none ran: no gradients: Einsum is not supported"
    assert "preprocessing" not in props


@pytest.mark.parametrize(("record", "text"), [
    ({"scale": 1.0, "mean": [0.0] * 3, "std": [1.0] * 3, "layout": "nchw", "channels": "rgb"}, "RGB, NCHW"),
    ({"scale": 1.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": "nchw",
      "channels": "rgb"}, "RGB, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225), NCHW"),
])
def test_preprocessing_text_names_only_what_differs_from_identity(record: dict[str, Any], text: str) -> None:
    assert preprocessing_text(record) == text
    assert white_box_text(None) is None and preprocessing_text(None) is None


def test_reports_without_these_records_are_unchanged() -> None:
    md = markdown(_report())
    assert "Preprocessing" not in md and "White-box" not in md
    assert {"preprocessing", "white_box"}.isdisjoint(_props(junit_xml(_report())))


def test_the_report_line_matches_the_cli_line() -> None:
    from rkd.deploy.adapters import Preprocessing

    pre = Preprocessing(scale=255.0, mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0), layout="nhwc", channels="bgr")
    assert preprocessing_text(pre.record()) == pre.describe()
