"""Models built to fool a gradient-based gate, each generated here in code: ``rkd verify`` must never PASS them.

Every model is a nearest-prototype classifier of the synthetic data (accurate on clean inputs, and not robust at
eps 64/255, where moving towards another class's prototype flips it) wrapped in a trick that hides that from
gradients. Under ``--attacks pgd20`` each must FAIL its floor gate or get the ``unreliable`` verdict; under the
default suite (PGD-20 + AutoAttack, whose Square only queries the engine) each must FAIL.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rkd.data import load_dataset
from rkd.verify.gates import parse_gate
from rkd.verify.verification import VerifyRequest, verify_artifact

EPS = 64 / 255
DATA = {"n": 64}
N = 24


def _prototype_weights() -> tuple[np.ndarray, np.ndarray]:
    """W (3072, 10) and b (10,) of the nearest-class-mean classifier: logits = x.mu_k - |mu_k|^2 / 2."""
    train = load_dataset("synthetic", "train")
    x = train.to_float(np.arange(len(train))).flatten(1).numpy()
    y = train.y.numpy()
    means = np.stack([x[y == k].mean(0) for k in range(10)])
    return means.T.astype(np.float32), (-0.5 * (means**2).sum(1)).astype(np.float32)


def _save(path: Path, before: list[onnx.NodeProto], inits: list[onnx.TensorProto],
          after: list[onnx.NodeProto] | None = None) -> Path:
    """``before`` maps ``input`` to ``x``; the prototype classifier maps ``x`` to ``proto``; ``after`` maps
    ``proto`` to ``logits`` (default: the identity)."""
    w, b = _prototype_weights()
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"), *inits]
    nodes = [*before, helper.make_node("Flatten", ["x"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["proto"]),
             *(after or [helper.make_node("Identity", ["proto"], ["logits"])])]
    graph = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                              ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _const(name: str, value: float | list[int], dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype), name)


def honest(path: Path) -> Path:
    """No trick: the plain prototype classifier (the control: gradient attacks break it)."""
    return _save(path, [helper.make_node("Identity", ["input"], ["x"])], [])


def int_cast_with_path(path: Path) -> Path:
    """The input cast to 33 integer levels (no gradient through a cast), plus 0*x to keep a path to the input."""
    nodes = [helper.make_node("Mul", ["input", "k"], ["s"]),
             helper.make_node("Cast", ["s"], ["q"], to=TensorProto.INT32),
             helper.make_node("Cast", ["q"], ["qf"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["qf", "k"], ["back"]),
             helper.make_node("Mul", ["input", "zero"], ["nothing"]),
             helper.make_node("Add", ["back", "nothing"], ["x"])]
    return _save(path, nodes, [_const("k", 32.0), _const("zero", 0.0)])


def int_cast_only(path: Path) -> Path:
    """The same cast, and no other path from the input to the logits."""
    nodes = [helper.make_node("Mul", ["input", "k"], ["s"]),
             helper.make_node("Cast", ["s"], ["q"], to=TensorProto.INT32),
             helper.make_node("Cast", ["q"], ["qf"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["qf", "k"], ["x"])]
    return _save(path, nodes, [_const("k", 32.0)])


def saturated_softmax(path: Path) -> Path:
    """Logits scaled by 1e4: the cross-entropy gradient underflows to exactly zero on confident samples."""
    return _save(path, [helper.make_node("Identity", ["input"], ["x"])], [_const("big", 1e4)],
                 [helper.make_node("Mul", ["proto", "big"], ["logits"])])


def integer_shape_sign(path: Path) -> Path:
    """Logits times (Div(3, 2) - 1.25) * -4 on an integer shape value: +1 where integers divide as integers (ONNX
    Runtime), -1 where 3 / 2 = 1.5; an interpreter that divides them as floats attacks the negated model."""
    before = [helper.make_node("Identity", ["input"], ["x"]),
              helper.make_node("Shape", ["input"], ["shape"]),
              helper.make_node("Gather", ["shape", "one"], ["channels"], axis=0),
              helper.make_node("Div", ["channels", "two"], ["half"]),
              helper.make_node("Cast", ["half"], ["half_f"], to=TensorProto.FLOAT),
              helper.make_node("Sub", ["half_f", "offset"], ["centred"]),
              helper.make_node("Mul", ["centred", "minus_four"], ["sign"])]
    return _save(path, before, [_const("one", 1, np.int64), _const("two", 2, np.int64), _const("offset", 1.25),
                                _const("minus_four", -4.0)], [helper.make_node("Mul", ["proto", "sign"], ["logits"])])


MASKED: list[Callable[[Path], Path]] = [int_cast_with_path, int_cast_only, saturated_softmax, integer_shape_sign]


def _verify(path: Path, attacks: str, n: int = N) -> dict:
    return verify_artifact(VerifyRequest(artifact=path, dataset="synthetic", data_options=DATA, n=n, attacks=attacks,
                                         eps=EPS, alpha=EPS / 4, norm="linf", transfer=False,
                                         gates=[parse_gate("robust_acc>=0.4")]))


def test_the_control_is_accurate_and_not_robust(tmp_path: Path) -> None:
    rep = _verify(honest(tmp_path / "honest.onnx"), "pgd20")
    assert rep["clean_acc"] >= 0.9 and rep["robust_acc"] <= 0.1 and rep["verdict"] == "fail"


@pytest.mark.parametrize("build", MASKED, ids=lambda f: f.__name__)
def test_a_masked_model_never_passes_under_pgd20(build: Callable[[Path], Path], tmp_path: Path) -> None:
    rep = _verify(build(tmp_path / "model.onnx"), "pgd20")
    assert rep["clean_acc"] >= 0.9, "the trick must keep the clean accuracy, or the test says nothing"
    assert rep["verdict"] in ("fail", "unreliable") and not rep["passed"], rep["reliability"]


@pytest.mark.slow
@pytest.mark.parametrize("build", MASKED, ids=lambda f: f.__name__)
def test_a_masked_model_fails_the_default_suite(build: Callable[[Path], Path], tmp_path: Path) -> None:
    rep = _verify(build(tmp_path / "model.onnx"), "pgd20,autoattack", n=8)  # AutoAttack: a few samples suffice
    assert rep["clean_acc"] >= 0.9 and rep["robust_acc"] < 0.4 and rep["verdict"] == "fail"
