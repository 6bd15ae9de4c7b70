"""rkd's ONNX Runtime sessions: idle intra-op threads sleep unless the caller says otherwise."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")

from rkd.deploy.runtimes import SESSION_CONFIG, OnnxRuntime  # noqa: E402

KEY = "session.intra_op.allow_spinning"


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("rt") / "m.onnx"
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).eval()
    torch.onnx.export(model, (torch.rand(1, 3, 4, 4),), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}}, dynamo=False)
    return path


def test_sessions_do_not_spin_by_default(onnx_file) -> None:
    rt = OnnxRuntime(onnx_file)
    assert SESSION_CONFIG[KEY] == "0"
    assert rt.session.get_session_options().get_session_config_entry(KEY) == "0"
    assert rt.describe()["session_config"][KEY] == "0"


def test_a_callers_session_config_wins(onnx_file) -> None:
    rt = OnnxRuntime(onnx_file, session_config={KEY: "1"})
    assert rt.session.get_session_options().get_session_config_entry(KEY) == "1"
    assert rt.predict(torch.rand(2, 3, 4, 4)).shape == (2, 5)
