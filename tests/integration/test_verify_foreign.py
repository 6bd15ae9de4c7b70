"""``rkd verify`` on ONNX models rkd did not make: stated preprocessing (pixel scale, mean/std, channel order,
layout), an image folder at the model's size, a label map, and the paths for a graph the interpreter cannot
differentiate (one-line refusal, black-box only and flagged, BPDA through a float reference).

The models are built here in ONNX: a colour classifier that takes its input as a team's own code would
(ImageNet mean/std on [0, 255] pixels, BGR, NCHW or NHWC) and undoes that normalisation inside, so it is
accurate only when the preprocessing rkd applies is the one stated, and robust at small radii.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from rkd.cli.app import app

MEAN_255 = np.array([123.675, 116.28, 103.53], dtype=np.float32)  # RGB
STD_255 = np.array([58.395, 57.12, 57.375], dtype=np.float32)
COLOURS = {"blue": (0.15, 0.2, 0.85), "green": (0.2, 0.85, 0.15), "red": (0.85, 0.2, 0.15)}  # sorted: labels 0, 1, 2


def _write_folder(root: Path, per_class: int = 10, side: int = 40) -> Path:
    """Noisy single-colour PNGs, one folder per class, larger than the model's input (decoding resizes them)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = np.clip(np.array(rgb) + rng.normal(0, 0.05, size=(side, side, 3)), 0, 1)
            Image.fromarray((img * 255).round().astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def _colour_model(path: Path, *, layout: str, outputs: int = 3, op: str = "MatMul", size: int = 32) -> Path:
    """Input: BGR, ((x*255) - mean)/std, in ``layout``; it undoes that and scores each colour by how far its
    channel stands above the others: logits = 10 * (mean colour @ W). ``outputs`` > 3 adds columns of zeros;
    ``op`` "Einsum" computes the same product with an operator the interpreter lacks."""
    shape = [1, 3, size, size] if layout == "nchw" else [1, size, size, 3]
    cshape = [1, 3, 1, 1] if layout == "nchw" else [1, 1, 1, 3]
    bgr_mean, bgr_std = MEAN_255[::-1].copy(), STD_255[::-1].copy()
    # blue/green/red logits from the BGR channel means: channel c minus the mean of the other two
    w = np.zeros((3, outputs), dtype=np.float32)
    for label, channel in enumerate((0, 1, 2)):  # blue = B (BGR channel 0), green = G, red = R
        w[:, label] = -5.0
        w[channel, label] = 10.0
    inits = [numpy_helper.from_array(bgr_std.reshape(cshape), "std"),
             numpy_helper.from_array(bgr_mean.reshape(cshape), "mean"),
             numpy_helper.from_array(np.array(255.0, dtype=np.float32), "k"), numpy_helper.from_array(w, "w")]
    spatial = [2, 3] if layout == "nchw" else [1, 2]
    nodes = [helper.make_node("Mul", ["x", "std"], ["a"]), helper.make_node("Add", ["a", "mean"], ["b"]),
             helper.make_node("Div", ["b", "k"], ["pix"]),
             helper.make_node("ReduceMean", ["pix"], ["m4"], axes=spatial, keepdims=0)]
    if op == "Einsum":
        nodes.append(helper.make_node("Einsum", ["m4", "w"], ["logits"], equation="nc,ck->nk"))
    else:
        nodes.append(helper.make_node("MatMul", ["m4", "w"], ["logits"]))
    graph = helper.make_graph(nodes, "colour",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape[1:]])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", outputs])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


PRE = ["--pixel-scale", "255", "--mean", "103.53,116.28,123.675", "--std", "57.375,57.12,58.395",
       "--channels", "bgr"]


def _verify(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["verify", *args])
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_folder(tmp_path_factory.mktemp("data") / "imgs")


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_a_foreign_model_verifies_end_to_end_with_its_stated_preprocessing(
        tmp_path: Path, folder: Path, layout: str) -> None:
    model = _colour_model(tmp_path / f"colour-{layout}.onnx", layout=layout)
    code, out = _verify("--engine", str(model), "--data", f"imagefolder:{folder}", "--input-size", "32",
                        "--n", "30", "--attacks", "pgd5", "--eps", "4/255", "--gate", "robust_acc>=0.9",
                        "--no-transfer", "--report", str(tmp_path / "rep"), *PRE, "--layout", layout)
    assert code == 0, out
    rep = json.loads((tmp_path / "rep" / "verify.json").read_text())
    assert rep["clean_acc"] == 1.0 and rep["robust_acc"] >= 0.9
    assert rep["preprocessing"] == {"scale": 255.0, "mean": [103.53, 116.28, 123.675],
                                    "std": [57.375, 57.12, 58.395], "layout": layout, "channels": "bgr"}
    assert rep["artifact"]["preprocessing"]["layout"] == layout
    assert rep["white_box"]["ran"] and rep["white_box"]["gradient_rules"]
    assert rep["data"]["options"]["image_size"] == 32
    assert rep["agreement"]["clean"]["top1_agreement"] == 1.0
    md = (tmp_path / "rep" / "verify.md").read_text()
    assert f"Preprocessing in front of the model: BGR, x*255, mean (103.5, 116.3, 123.7), std (57.38, 57.12, " \
           f"58.4), {layout.upper()}." in md
    assert "White-box attacks: ran (pgd5) with gradients from onnx-interpreter" in md
    junit = (tmp_path / "rep" / "verify.junit.xml").read_text()
    assert 'name="preprocessing" value="BGR, x*255' in junit and 'name="white_box" value="ran (pgd5)' in junit


def test_the_input_size_comes_from_the_model_when_not_given(tmp_path: Path, folder: Path) -> None:
    model = _colour_model(tmp_path / "m.onnx", layout="nhwc", size=24)
    code, out = _verify("--engine", str(model), "--data", f"imagefolder:{folder}", "--n", "9", "--attacks",
                        "pgd2", "--no-gates", "--report", str(tmp_path / "rep"), *PRE, "--layout", "nhwc")
    assert code == 0, out
    assert json.loads((tmp_path / "rep" / "verify.json").read_text())["data"]["options"]["image_size"] == 24


def test_preprocessing_stated_wrong_shows_in_clean_accuracy_and_a_warning(tmp_path: Path, folder: Path) -> None:
    model = _colour_model(tmp_path / "m.onnx", layout="nchw")
    # no preprocessing stated: the model reads [0, 1] pixels as normalised ones and sees one colour everywhere
    code, out = _verify("--engine", str(model), "--data", f"imagefolder:{folder}", "--input-size", "32",
                        "--n", "30", "--attacks", "pgd2", "--no-gates", "--report", str(tmp_path / "rep"))
    rep = json.loads((tmp_path / "rep" / "verify.json").read_text())
    assert code == 0 and rep["clean_acc"] <= 0.5, out
    assert any("chance level" in w and "--mean" in w for w in rep["warnings"]), rep["warnings"]


def test_a_layout_stated_wrong_names_both_shapes(tmp_path: Path, folder: Path) -> None:
    model = _colour_model(tmp_path / "m.onnx", layout="nhwc")
    code, out = _verify("--engine", str(model), "--data", f"imagefolder:{folder}", "--input-size", "32",
                        "--n", "9", "--attacks", "pgd2", "--no-gates", *PRE)  # --layout nhwc missing
    assert code == 2 and "takes inputs shaped" in out, out


def test_a_label_map_picks_the_data_sets_classes_from_more_outputs(tmp_path: Path, folder: Path) -> None:
    model = _colour_model(tmp_path / "m.onnx", layout="nchw", outputs=7)
    common = ["--engine", str(model), "--data", f"imagefolder:{folder}", "--input-size", "32", "--n", "30",
              "--attacks", "pgd2", "--no-gates", *PRE]
    code, out = _verify(*common)
    assert code == 2 and "outputs 7 scores" in out and "--label-map" in out, out
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"blue": 0, "green": 1, "red": 2}))
    code, out = _verify(*common, "--label-map", str(labels), "--report", str(tmp_path / "rep"))
    assert code == 0, out
    assert json.loads((tmp_path / "rep" / "verify.json").read_text())["clean_acc"] == 1.0
    labels.write_text(json.dumps({"blue": 0, "green": 1}))
    code, out = _verify(*common, "--label-map", str(labels))
    assert code == 2 and "maps no output to 1 class" in out, out
    labels.write_text(json.dumps({"blue": 0, "green": 1, "red": 9}))
    code, out = _verify(*common, "--label-map", str(labels))
    assert code == 2 and "outside the model's 7 outputs" in out, out


@pytest.mark.parametrize("args, message", [
    (["--mean", "imagenet"], "--mean and --std go together"),
    (["--mean", "1,2", "--std", "1"], "give one or three numbers"),
    (["--mean", "0", "--std", "0"], "--std values must be positive"),
    (["--pixel-scale", "0"], "--pixel-scale must be a positive number"),
    (["--input-size", "32"], "--input-size decodes an image folder"),
    (["--reference-model", "tv_resnet18"], "give --reference FILE too"),
])
def test_bad_preprocessing_options_are_one_line_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    model = _colour_model(tmp_path / "m.onnx", layout="nchw")
    code, out = _verify("--engine", str(model), "--data", "synthetic", "--no-gates", *args)
    assert code == 2 and message in out, out


def test_preprocessing_for_an_rkd_model_is_refused(tmp_path: Path) -> None:
    from rkd.models import create_model, save_checkpoint

    ckpt = save_checkpoint(create_model("tiny_cnn", num_classes=10), tmp_path / "m.safetensors")
    code, out = _verify("--engine", str(ckpt), "--data", "synthetic", "--no-gates", "--mean", "imagenet", "--std",
                        "imagenet")
    assert code == 2 and "normalises them itself" in out, out


def test_an_op_the_interpreter_lacks_is_one_line_and_black_box_runs_flagged(tmp_path: Path, folder: Path) -> None:
    model = _colour_model(tmp_path / "m.onnx", layout="nchw", op="Einsum")
    common = ["--engine", str(model), "--data", f"imagefolder:{folder}", "--input-size", "32", "--n", "12", *PRE]
    code, out = _verify(*common, "--attacks", "pgd2", "--gate", "robust_acc>=0.5", "--no-transfer")
    assert code == 2 and "Einsum" in out and len(out.strip().splitlines()) <= 3, out
    # black-box only: runs, says that no white-box attack ran, and a gate cannot pass on it
    code, out = _verify(*common, "--attacks", "square", "--gate", "robust_acc>=0.5", "--report", str(tmp_path / "r"))
    rep = json.loads((tmp_path / "r" / "verify.json").read_text())
    assert code == 5 and rep["verdict"] == "unreliable", out
    assert not rep["white_box"]["ran"] and "Einsum" in rep["white_box"]["why_not"]
    assert any("no white-box attack ran" in r for r in rep["reliability"]["unreliable"])
    assert rep["robust_acc"] >= 0.5  # the gate alone would have passed


def test_a_float_reference_gives_the_gradients_when_the_interpreter_cannot(tmp_path: Path, folder: Path) -> None:
    model = _colour_model(tmp_path / "m.onnx", layout="nchw", op="Einsum")
    ref = _colour_model(tmp_path / "ref.onnx", layout="nchw")
    code, out = _verify("--engine", str(model), "--reference", str(ref), "--data", f"imagefolder:{folder}",
                        "--input-size", "32", "--n", "12", "--attacks", "pgd5", "--eps", "4/255",
                        "--gate", "robust_acc>=0.5", "--report", str(tmp_path / "r"), *PRE)
    rep = json.loads((tmp_path / "r" / "verify.json").read_text())
    assert code == 0, out
    assert rep["surrogate"]["kind"] == "the float reference (BPDA)" and rep["white_box"]["ran"]
    assert any("gradients come from the float reference" in w for w in rep["warnings"])
    assert rep["agreement"]["clean"]["top1_agreement"] == 1.0
