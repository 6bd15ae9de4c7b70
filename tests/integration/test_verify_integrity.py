"""What a verify verdict is bound to and when it cannot pass: an ONNX model's external data is part of its
fingerprint; the threat model a gate judges is stated or recorded in the hashed model file; an evaluation whose
gradients cannot be trusted, with nothing gradient-free beside them, is unreliable, not a pass."""

from __future__ import annotations

import dataclasses
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
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],
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


# -- the threat model a gate judges ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An INT8 bundle of a tiny classifier trained for L-inf 8/255 (export + quantize, as rkd makes them)."""
    from rkd.data import load_dataset
    from rkd.models import save_checkpoint
    from rkd.quantize.pipeline import quantize_checkpoint
    from rkd.testing import train_tiny_classifier

    root = tmp_path_factory.mktemp("integrity")
    data = load_dataset("synthetic", "train")
    meta = {"data": {"dataset": "synthetic", "classes": list(data.classes)},
            "threat": {"norm": "linf", "eps": 8 / 255, "alpha": 2 / 255}}
    ckpt = save_checkpoint(train_tiny_classifier(), root / "student.safetensors", metadata=meta)
    quantize_checkpoint(ckpt, root / "bundle", calib_data=("synthetic", {}), calib_n=64, eval_n=0)
    return root / "bundle"


def _copy(bundle: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def _gated(path: Path, **kw: object) -> VerifyRequest:
    from rkd.verify.gates import parse_gate

    return VerifyRequest(artifact=path, dataset="synthetic", data_options={"n": 64}, n=16, attacks="fgsm",
                         gates=[parse_gate("robust_acc>=0.01")], transfer=False, **kw)  # type: ignore[arg-type]


def test_the_threat_model_comes_from_the_hashed_model_file_and_the_report_says_so(bundle: Path) -> None:
    from rkd.deploy.onnx_files import stamped_threat_model

    for name in ("model.onnx", "model.int8.onnx"):
        assert stamped_threat_model(bundle / name) == {"norm": "linf", "eps": pytest.approx(8 / 255)}
    rep = verify_artifact(_gated(bundle / "model.int8.onnx"))
    assert rep["eps"] == pytest.approx(8 / 255)
    assert rep["sources"]["eps"] == rep["sources"]["norm"] == "the model file (model.int8.onnx)"


@pytest.mark.parametrize("eps", [1e-300, 16 / 255])
def test_an_edited_manifest_threat_model_is_refused(bundle: Path, tmp_path: Path, eps: float) -> None:
    import json

    copy = _copy(bundle, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["threat_model"]["eps"] = eps
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="differs from the one recorded in the model file"):
        verify_artifact(_gated(copy / "model.int8.onnx"))


def test_a_bundle_without_the_record_needs_a_stated_threat_model_to_judge(bundle: Path, tmp_path: Path) -> None:
    """As an older bundle: the model file records nothing and the manifest's hashes match it."""
    import json

    from rkd.atomic import file_sha256

    copy = _copy(bundle, tmp_path)
    model = onnx.load(str(copy / "model.int8.onnx"))
    del model.metadata_props[:]
    onnx.save_model(model, str(copy / "model.int8.onnx"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["model.int8.onnx"]["sha256"] = file_sha256(copy / "model.int8.onnx")
    manifest["files"]["model.int8.onnx"]["bytes"] = (copy / "model.int8.onnx").stat().st_size
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="no hash covers"):
        verify_artifact(_gated(copy / "model.int8.onnx"))
    stated = verify_artifact(_gated(copy / "model.int8.onnx", eps=8 / 255, norm="linf"))
    assert stated["sources"]["eps"] == "given" and stated["verdict"] in ("pass", "fail")
    measured = verify_artifact(VerifyRequest(artifact=copy / "model.int8.onnx", dataset="synthetic",
                                             data_options={"n": 64}, n=16, attacks="fgsm", transfer=False))
    assert "no hash covers it" in measured["sources"]["eps"] and measured["verdict"] == "no gates"


def test_a_radius_below_one_intensity_level_cannot_be_judged(bundle: Path) -> None:
    with pytest.raises(UsageError, match="below 1/255"):
        verify_artifact(_gated(bundle / "model.int8.onnx", eps=0.5 / 255))


# -- an evaluation that cannot be trusted does not pass ---------------------------------------------------------


def _masked_onnx(path: Path, *, keep_path: bool = True) -> Path:
    """A linear classifier on the input cast to 8 levels of int32 (no gradient through the cast), plus 0*x so
    the graph still reaches the input (``keep_path``): gradient attacks see exactly zero gradients. Without
    it the only way from the input to the logits goes through the cast."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.normal(size=(3072, 10)).astype(np.float32), "w")
    consts = [numpy_helper.from_array(np.array(255 / 32, np.float32), "k"),
              numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    nodes = [helper.make_node("Mul", ["input", "k"], ["scaled"]),
             helper.make_node("Cast", ["scaled"], ["levels"], to=TensorProto.INT32),
             helper.make_node("Cast", ["levels"], ["back"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["input", "zero"], ["nothing"]),
             helper.make_node("Add", ["back", "nothing"], ["x"]) if keep_path else helper.make_node(
                 "Identity", ["back"], ["x"]),
             helper.make_node("Flatten", ["x"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "masked", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                              ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], [w, *consts])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_zero_gradients_without_a_gradient_free_attack_are_unreliable_not_a_pass(tmp_path: Path) -> None:
    from rkd.verify.gates import parse_gate
    from rkd.verify.report import junit_xml, markdown, verdict_exit_code

    path = _masked_onnx(tmp_path / "masked.onnx")
    gate = [parse_gate("clean_acc>=0.0")]  # passes whatever the numbers: only reliability can stop it
    base = dict(artifact=path, dataset="synthetic", data_options={"n": 64}, n=32, eps=8 / 255, norm="linf",
                gates=gate, allow_no_floor=True, transfer=False)
    rep = verify_artifact(VerifyRequest(attacks="pgd10", **base))  # type: ignore[arg-type]
    assert rep["worst_case"]["acc"] == rep["clean_acc"] > 0  # the gradient attack moved nothing
    assert all(g["passed"] for g in rep["gates"])
    assert rep["verdict"] == "unreliable" and not rep["passed"] and verdict_exit_code(rep) == 5
    assert any("zero or non-finite input gradients" in r for r in rep["reliability"]["unreliable"])
    assert "UNRELIABLE" in markdown(rep) and "reliable evaluation" in junit_xml(rep)
    # with Square on the engine the numbers stand on their own: judged as usual
    square = verify_artifact(VerifyRequest(attacks="pgd10,square", **base))  # type: ignore[arg-type]
    assert square["reliability"]["unreliable"] == [] and square["verdict"] == "pass"
    # measuring only (no gates): reported, not a verdict
    measured = verify_artifact(VerifyRequest(attacks="pgd10", **{**base, "gates": [], "allow_no_floor": False}))
    assert measured["verdict"] == "no gates" and measured["reliability"]["unreliable"]


def test_a_model_reached_only_through_a_cast_is_unreliable_not_a_crash(tmp_path: Path) -> None:
    from rkd.verify.gates import parse_gate

    path = _masked_onnx(tmp_path / "cast_only.onnx", keep_path=False)
    rep = verify_artifact(VerifyRequest(artifact=path, dataset="synthetic", data_options={"n": 64}, n=32,
                                        attacks="fgsm,pgd5,cw", eps=8 / 255, norm="linf", transfer=False,
                                        gates=[parse_gate("clean_acc>=0.0")], allow_no_floor=True))
    assert rep["verdict"] == "unreliable" and rep["worst_case"]["acc"] == rep["clean_acc"]


def test_integer_div_in_the_interpreter_divides_as_onnx_runtime_does(tmp_path: Path) -> None:
    import onnxruntime as ort
    import torch

    from rkd.quantize.surrogate import onnx_module

    a = numpy_helper.from_array(np.array([7, -7, 3], np.int64), "a")
    b = numpy_helper.from_array(np.array([2, 2, 2], np.int64), "b")
    nodes = [helper.make_node("Div", ["a", "b"], ["q"]), helper.make_node("Cast", ["q"], ["qf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["input", "qf"], ["out"])]
    graph = helper.make_graph(nodes, "intdiv", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])], [a, b])
    path = tmp_path / "intdiv.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = np.ones((1, 3), np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    got = onnx_module(path)(torch.from_numpy(x)).detach().numpy()
    assert np.array_equal(expected, [[3.0, -3.0, 1.0]]) and np.array_equal(got, expected)


def test_the_cli_exits_5_on_an_unreliable_evaluation_and_says_why(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    path = _masked_onnx(tmp_path / "masked.onnx")
    proc = subprocess.run([sys.executable, "-m", "rkd", "verify", "--engine", str(path), "--data", "synthetic:n=64",
                           "--n", "32", "--attacks", "pgd10", "--gate", "clean_acc>=0.0", "--allow-no-floor",
                           "--no-transfer", "--report", str(tmp_path / "out")],
                          capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "250"})
    assert proc.returncode == 5, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "UNRELIABLE" in proc.stdout and "zero or non-finite input gradients" in proc.stdout
    assert "threat model: linf eps=8/255 (eps from default, norm from default)" in proc.stderr  # the progress log


def test_a_flag_wins_over_the_profile_which_wins_over_the_default_and_each_source_is_recorded() -> None:
    from rkd.config import VerifyConfig
    from rkd.verify.request import request_from_config

    profile = VerifyConfig(n=500, sample="random", gates=["robust_acc>=0.3"])
    unset = {"n": None, "sample": None, "eps": None, "attacks": None}
    req = request_from_config("m.onnx", profile, source="profile p", flags=unset)
    assert (req.n, req.sample, req.attacks) == (500, "random", "pgd20,autoattack")
    assert (req.source("n"), req.source("sample"), req.source("attacks"), req.source("eps")) == (
        "profile p", "profile p", "default", "default")
    assert [g.source for g in req.gates] == ["profile p"]
    req = request_from_config("m.onnx", profile, source="profile p", flags={**unset, "sample": "first", "eps": 0.01})
    assert (req.sample, req.eps, req.source("sample"), req.source("eps")) == ("first", 0.01, "--sample", "--eps")
    with pytest.raises(dataclasses.FrozenInstanceError):  # nothing edits a request once it is built
        req.n = 3  # type: ignore[misc]
