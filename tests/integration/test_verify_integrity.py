"""What a verify verdict is bound to: an ONNX model's external data is part of its fingerprint (report and
resumable state), so new weights beside an unchanged graph are never judged from a stale state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rkd.errors import CheckpointError, UsageError
from rkd.verify.verification import VerifyRequest, verify_artifact


def _linear_onnx(path: Path, weight: np.ndarray, *, external: str | None) -> Path:
    """A linear classifier over flattened 3x32x32 inputs, its weights inside the file or in ``external``."""
    w = numpy_helper.from_array(weight.astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "linear", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if external is None:
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=external, size_threshold=0)
    return path


def _request(path: Path, state: Path | None) -> VerifyRequest:
    return VerifyRequest(artifact=path, dataset="synthetic", data_options={"n": 64}, n=32, attacks="fgsm",
                         eps=8 / 255, norm="linf", state=state)


def test_external_data_is_part_of_the_fingerprint_and_a_stale_state_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = _linear_onnx(tmp_path / "model.onnx", rng.normal(size=(3072, 10)), external="weights.bin")
    first = verify_artifact(_request(path, tmp_path / "state"))
    data = first["artifact"]["external_data"]
    assert list(data) == ["weights.bin"] and first["artifact"]["sha256"] != data["weights.bin"]
    graph_digest = first["artifact"]["sha256"]

    _linear_onnx(path, np.zeros((3072, 10)), external="weights.bin")  # the same graph, other weights
    with pytest.raises(UsageError, match="belongs to a run with other settings"):
        verify_artifact(_request(path, tmp_path / "state"))
    fresh = verify_artifact(_request(path, None))
    assert fresh["artifact"]["sha256"] != graph_digest
    assert fresh["artifact"]["external_data"]["weights.bin"] != data["weights.bin"]
    assert fresh["clean_acc"] != first["clean_acc"] or fresh["attacks"] != first["attacks"]


def test_a_self_contained_model_keeps_its_plain_file_digest(tmp_path: Path) -> None:
    from rkd.atomic import file_sha256

    path = _linear_onnx(tmp_path / "model.onnx", np.ones((3072, 10)), external=None)
    rep = verify_artifact(_request(path, None))
    assert rep["artifact"]["sha256"] == file_sha256(path) and "external_data" not in rep["artifact"]


def test_missing_or_escaping_external_data_is_named(tmp_path: Path) -> None:
    path = _linear_onnx(tmp_path / "model.onnx", np.ones((3072, 10)), external="weights.bin")
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(CheckpointError, match="'weights.bin', which is missing"):
        verify_artifact(_request(path, None))
    # a data file named outside the model's folder is refused, not read
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../elsewhere.bin"
    (tmp_path.parent / "elsewhere.bin").write_bytes(b"\0" * 3072 * 10 * 4)
    onnx.save_model(model, str(path))
    with pytest.raises(CheckpointError, match="outside its folder"):
        verify_artifact(_request(path, None))
