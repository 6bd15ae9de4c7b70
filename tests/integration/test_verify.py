"""`rkd verify` end to end on CPU (synthetic data, a tiny CNN, real ONNX Runtime INT8 bundles).

The evidence issue 5 asks for: gradient masking is caught (a model that rounds its own input looks robust to
plain PGD, verify reports its true robustness); verify on the float ONNX equals `rkd eval` on the checkpoint;
an engine much less robust than its float student fails the drop gate with exit 1 and the JUnit file names
the gate; a killed run resumes from --state to the same result; bad input is exit 2 before any attack.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import typer
from onnx import numpy_helper
from torch import nn
from typer.testing import CliRunner

from rkd.cli.verify import verify
from rkd.data import load_dataset, select_indices
from rkd.errors import CheckpointError, UsageError
from rkd.models import save_checkpoint
from rkd.quantize.pipeline import quantize_checkpoint
from rkd.testing import train_tiny_classifier
from rkd.verify.differentiable import load_differentiable
from rkd.verify.evaluate import EvalRequest, evaluate_model
from rkd.verify.gates import parse_gate
from rkd.verify.state import VerifyState
from rkd.verify.suite import evaluate_robustness, predict_correct
from rkd.verify.verification import VerifyRequest, verify_artifact

app = typer.Typer()
app.command("verify")(verify)


@app.callback()
def _root() -> None:
    """A group, so args start with the command name as with `rkd`."""


runner = CliRunner()
DATA = "synthetic:n=500"


def _run(*args: str):
    """``rkd verify ARGS --allow-no-floor``: these tests judge other things than the floor rule (that is in
    tests/integration/test_verify_floor.py)."""
    return runner.invoke(app, ["verify", *args, "--allow-no-floor"], catch_exceptions=False)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CNN fitted on synthetic data, exported and INT8-quantized (ONNX Runtime, cpu scheme)."""
    root = tmp_path_factory.mktemp("verify")
    data = load_dataset("synthetic", "train")
    meta = {"data": {"dataset": "synthetic", "classes": list(data.classes)},
            "threat": {"norm": "linf", "eps": 8 / 255, "alpha": 2 / 255}}
    ckpt = save_checkpoint(train_tiny_classifier(), root / "student.safetensors", metadata=meta)
    quantize_checkpoint(ckpt, root / "bundle", calib_data=("synthetic", {}), calib_n=128, eval_n=0)
    return root / "bundle"


def test_verify_cli_on_an_int8_bundle_writes_every_report(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    res = _run("--engine", str(bundle / "model.int8.onnx"), "--data", DATA, "--n", "64", "--attacks", "fgsm,pgd5",
               "--gate", "drop.robust_acc<=0.2", "--gate", "agreement.clean>=0.9", "--gate", "worst_class.clean_acc>=0",
               "--report", str(tmp_path / "r"),
               "--junit", str(tmp_path / "junit.xml"), "--curve", "--curve-eps", "0,4/255,8/255", "--by-class")
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "r" / "verify.json").read_text())
    assert rep["kind"] == "rkd-verify" and rep["artifact"]["kind"] == "onnx-int8" and rep["n"] == 64
    assert rep["surrogate"]["kind"] == "onnx-qdq-interpreter" and rep["reference"]["file"].endswith("model.onnx")
    assert rep["eps"] == pytest.approx(8 / 255) and set(rep["attacks"]) == {"clean", "fgsm", "pgd5", "transfer"}
    worst = rep["worst_case"]["correct"]
    assert all(worst <= a["correct"] for a in rep["attacks"].values())
    per_sample = np.array([rep["per_sample"][k] for k in rep["per_sample"]])
    assert worst == int(per_sample.all(0).sum())  # robust = right on clean and under every attack
    assert rep["drop"]["robust_acc"] == pytest.approx(rep["float"]["robust_acc"] - rep["robust_acc"])
    assert rep["attacks"]["transfer"]["details"]["not_covered"] == 0  # FGSM/PGD also ran from the float's errors
    assert rep["agreement"]["clean"]["n"] == 64 and rep["agreement"]["adversarial"]["n"] > 0
    assert rep["curve"]["eps"] == pytest.approx([0, 4 / 255, 8 / 255]) and len(rep["curve"]["engine"]) == 3
    assert rep["curve"]["engine"][0] == rep["clean_acc"] and rep["curve"]["engine"][2] <= rep["curve"]["engine"][1]
    assert (tmp_path / "r" / "verify.curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cases = ET.parse(tmp_path / "junit.xml").getroot().findall("testcase")
    assert [c.get("name") for c in cases] == ["gate drop.robust_acc<=0.2", "gate agreement.clean>=0.9",
                                              "gate worst_class.clean_acc>=0"]
    assert summary.read_text().startswith("## rkd verify: PASS")
    assert rep["passed"] and [g["passed"] for g in rep["gates"]] == [True, True, True]
    # the engine's accuracy per class, transfer included, in the JSON, the Markdown and (--by-class) the console
    bc = rep["by_class"]
    assert set(bc["acc"]) == {"clean", "fgsm", "pgd5", "transfer", "worst_case"} and sum(bc["support"]) == 64
    for name, flags in rep["per_sample"].items():  # per-class hits add up to the per-sample column
        assert sum(a * k for a, k in zip(bc["acc"][name], bc["support"], strict=True) if a is not None) == \
            pytest.approx(sum(flags))
    assert "Engine accuracy per class" in summary.read_text() and "engine accuracy per class" in res.output
    assert rep["gates"][2]["value"] == min(a for a in bc["acc"]["clean"] if a is not None)


def test_a_tightened_gate_fails_with_exit_1_and_junit_names_it(bundle: Path, tmp_path: Path) -> None:
    res = _run("--engine", str(bundle), "--data", DATA, "--n", "32", "--attacks", "pgd3", "--gate",
               "robust_acc>1", "--gate", "clean_acc>=0.5", "--report", str(tmp_path))
    assert res.exit_code == 1, res.output
    root = ET.parse(tmp_path / "verify.junit.xml").getroot()
    assert root.get("failures") == "1" and root.get("tests") == "2"
    failed = [c for c in root.findall("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["gate robust_acc>1"]
    assert "required > 1" in failed[0].find("failure").get("message")
    assert "FAIL" in (tmp_path / "verify.md").read_text()


def _crude_copy(int8: Path, out: Path, factor: float) -> Path:
    """The INT8 model with every activation scale multiplied by ``factor``: a crude quantization built on purpose."""
    model = onnx.load(str(int8))
    inits = {i.name: i for i in model.graph.initializer}
    scaled = set()
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[1] in inits and node.input[1] not in scaled:
            init = inits[node.input[1]]
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))
            scaled.add(node.input[1])
    assert scaled
    onnx.save(model, str(out))
    return out


def test_a_crudely_quantized_engine_fails_the_drop_gate(bundle: Path, tmp_path: Path) -> None:
    crude = _crude_copy(bundle / "model.int8.onnx", tmp_path / "crude.int8.onnx", factor=24.0)
    res = _run("--engine", str(crude), "--reference", str(bundle / "model.onnx"), "--data", DATA, "--n", "128",
               "--eps", "4/255", "--attacks", "pgd5", "--gate", "drop.robust_acc<=0.03", "--gate", "clean_acc>=0.0",
               "--report", str(tmp_path / "r"))
    assert res.exit_code == 1, res.output
    rep = json.loads((tmp_path / "r" / "verify.json").read_text())
    assert rep["drop"]["robust_acc"] > 0.1, rep["drop"]
    root = ET.parse(tmp_path / "r" / "verify.junit.xml").getroot()
    failed = [c.get("name") for c in root.findall("testcase") if c.find("failure") is not None]
    # the surrogate computes the crude grid as ONNX Runtime's integer kernels do, so it still agrees with the
    # engine: the evaluation is reliable and the gate's failure is the only one
    assert rep["agreement"]["clean"]["top1_agreement"] >= 0.99, rep["agreement"]
    assert failed == ["gate drop.robust_acc<=0.03"] and rep["verdict"] == "fail"
    ok = _run("--engine", str(bundle / "model.int8.onnx"), "--data", DATA, "--n", "128", "--eps", "4/255",
              "--attacks", "pgd5", "--gate", "drop.robust_acc<=0.03", "--report", str(tmp_path / "ok"))
    assert ok.exit_code == 0, ok.output  # the honest INT8 model of the same student passes the same gate


def test_verify_on_the_float_onnx_equals_rkd_eval_on_the_checkpoint(bundle: Path) -> None:
    from rkd.models import load_checkpoint

    attacks = "fgsm,pgd10,cw10"
    req = VerifyRequest(artifact=bundle / "model.onnx", dataset="synthetic", data_options={"n": 500}, n=500,
                        attacks=attacks, eps=8 / 255, seed=3)
    rep = verify_artifact(req)
    net, _ = load_checkpoint(bundle.parent / "student.safetensors")
    ev = evaluate_model(net, EvalRequest(dataset="synthetic", data_options={"n": 500}, n=500, attacks=attacks,
                                         eps=8 / 255, seed=3))
    assert rep["artifact"]["kind"] == "onnx-float" and rep["data"]["indices_sha256"] == ev["data"]["indices_sha256"]
    assert rep["per_sample"]["clean"] == ev["per_sample"]["clean"]  # identical clean accuracy, sample by sample
    assert abs(rep["worst_case"]["correct"] - ev["worst_case"]["correct"]) <= 1
    for name in attacks.split(","):
        assert abs(rep["attacks"][name]["correct"] - ev["attacks"][name]["correct"]) <= 1, name


class _RoundsItsInput(nn.Module):
    """Gradient masking by construction: the forward quantizes its own input, so its gradient is zero."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x * 8) / 8)


def test_gradient_masking_is_caught(tmp_path: Path) -> None:
    masked = _RoundsItsInput(train_tiny_classifier()).eval()
    data = load_dataset("synthetic", "test", n=500)
    x, y = data.to_float()[:100], data.y[:100]
    eps = 12 / 255
    plain = evaluate_robustness(masked, x, y, attacks="pgd10", eps=eps, alpha=eps / 4)
    assert plain.accuracy("clean") >= 0.9 and plain.accuracy("pgd10") >= 0.95  # looks robust to plain PGD
    path = tmp_path / "masked.onnx"
    torch.onnx.export(masked, (x[:2],), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    rep = verify_artifact(VerifyRequest(artifact=path, dataset="synthetic", data_options={"n": 500}, n=100,
                                        attacks="pgd10,square", eps=eps, alpha=eps / 4))
    assert rep["robust_acc"] <= plain.accuracy("pgd10") - 0.5, rep["attacks"]
    assert rep["attacks"]["pgd10"]["acc"] <= 0.5  # BPDA through the interpreted Round
    # Through the masked model itself every input gradient is exactly zero: what the zero-gradient warning counts.
    from rkd.deploy.runtimes import TorchRuntime
    from rkd.verify.diagnostics import zero_gradients
    from rkd.verify.engine_model import EngineModel

    assert zero_gradients(EngineModel(TorchRuntime(masked), masked), x, y, 50, torch.device("cpu")) == len(x)


def test_a_killed_run_resumes_from_its_state_to_the_same_result(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def request(state: Path | None) -> VerifyRequest:
        return VerifyRequest(artifact=bundle / "model.int8.onnx", dataset="synthetic", data_options={"n": 500},
                             n=48, attacks="pgd5,aa-custom:apgd-ce", state=state, batch_size=16)

    whole = verify_artifact(request(None))
    saves = {"n": 0}
    real_save = VerifyState.save

    def dying_save(self: VerifyState, suite: str, outcome) -> None:
        real_save(self, suite, outcome)
        saves["n"] += 1
        if saves["n"] == 4:  # float suite done, engine clean saved
            raise KeyboardInterrupt

    monkeypatch.setattr(VerifyState, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        verify_artifact(request(tmp_path / "state"))
    monkeypatch.setattr(VerifyState, "save", real_save)
    resumed = verify_artifact(request(tmp_path / "state"))
    assert resumed["per_sample"] == whole["per_sample"]
    assert resumed["timing"]["float_s"] < whole["timing"]["float_s"]  # finished work is not redone
    for change in ({"seed": 1}, {"batch_size": 8},
                   {"data_options": {"n": 500, "seed": 1}}):  # other images at the same indices
        with pytest.raises(UsageError, match="belongs to a run with other settings"):
            verify_artifact(VerifyRequest(**{**request(tmp_path / "state").__dict__, **change}))
    damaged = next((tmp_path / "state").glob("engine--*.safetensors"))
    good = damaged.read_bytes()
    damaged.write_bytes(good[: len(good) // 2])
    with pytest.raises(UsageError, match="is damaged"):
        verify_artifact(request(tmp_path / "state"))
    damaged.write_bytes(good)
    (tmp_path / "state" / "meta.json").write_text("{not json")
    with pytest.raises(UsageError, match="not a readable rkd verify state"):
        verify_artifact(request(tmp_path / "state"))
    (tmp_path / "state" / "meta.json").unlink()
    with pytest.raises(UsageError, match="holds files but no meta.json"):  # whose outcomes they are is unknown
        verify_artifact(request(tmp_path / "state"))


def test_no_gates_measures_without_a_verdict(bundle: Path, tmp_path: Path) -> None:
    res = _run("--engine", str(bundle / "model.int8.onnx"), "--data", DATA, "--n", "16", "--attacks", "fgsm",
               "--no-gates", "--report", str(tmp_path))
    assert res.exit_code == 0, res.output
    assert "MEASURED (no gates)" in res.output
    rep = json.loads((tmp_path / "verify.json").read_text())
    assert rep["verdict"] == "no gates" and rep["gates"] == []
    assert "measured, no gates" in (tmp_path / "verify.md").read_text()


def test_a_reference_or_surrogate_of_another_classifier_is_refused(bundle: Path, tmp_path: Path) -> None:
    from rkd.models import create_model

    other = save_checkpoint(create_model("tiny_cnn", num_classes=5), tmp_path / "five.safetensors")
    base = ["--engine", str(bundle / "model.int8.onnx"), "--data", DATA, "--n", "8", "--attacks", "fgsm",
            "--gate", "drop.robust_acc<=0.03", "--report", str(tmp_path / "r")]
    for flag in ("--reference", "--surrogate"):
        res = _run(*base, flag, str(other))
        assert res.exit_code == 2, res.output
        assert f"{flag} '{other}' scores 5 classes but the engine 10" in " ".join(res.output.split())
    assert not (tmp_path / "r").exists()
    res = _run(*base, "--attacks", "")
    assert res.exit_code == 2 and "the attack list is empty" in res.output


def test_bad_input_is_exit_2_before_any_attack(bundle: Path, tmp_path: Path) -> None:
    base = ["--engine", str(bundle / "model.int8.onnx"), "--data", DATA, "--report", str(tmp_path)]
    no_gate = _run(*base)  # a run that could not fail is no check: refused
    assert no_gate.exit_code == 2 and "no gate to judge the artifact against" in " ".join(no_gate.output.split())
    both = _run(*base, "--no-gates", "--gate", "clean_acc>=0.5")
    assert both.exit_code == 2 and "--no-gates with gates" in both.output
    base += ["--gate", "clean_acc>=0"]
    cases = [
        (["--gate", "robust_acc=>0.4"], "not METRIC OP VALUE"),
        (["--gate", "autoattack_acc>=0.4", "--attacks", "pgd5"], "add 'autoattack' to the attacks"),
        (["--n", "501"], "more samples than"),
        (["--profile", str(Path(__file__).parents[2] / "export" / "x86-cpu-int8.yaml"), "--n", "100"],
         "gates were set for n >= 1000"),
        (["--attacks", "pgd"], "unknown attack 'pgd'"),
        (["--eps", "8"], "(0, 1]"),
        (["--norm", "l2"], "give --eps for the l2 ball"),  # the bundle's eps is an L-inf radius
    ]
    for extra, message in cases:
        res = _run(*base, *extra)
        assert res.exit_code == 2, (extra, res.output)
        assert message in " ".join(res.output.split()), (extra, res.output)
    assert not (tmp_path / "verify.json").exists()
    missing = _run("--engine", str(tmp_path / "nope.onnx"), "--data", DATA)
    assert missing.exit_code == 2 and "not found" in missing.output


def test_a_changed_bundle_file_and_a_stale_engine_are_refused(bundle: Path, tmp_path: Path) -> None:
    import shutil

    from rkd.deploy.bundle import update_bundle
    from rkd.verify.target import open_target

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    engine = tmp_path / "fake.engine"
    engine.write_bytes(b"not really an engine")
    sha = json.loads((copy / "manifest.json").read_text())["files"]["model.int8.onnx"]["sha256"]
    update_bundle(copy, add={"model.x.int8.engine": engine},
                  sections={"engines": {"model.x.int8.engine": {"source_onnx": "model.int8.onnx",
                                                                "source_onnx_sha256": sha}}})
    crude = _crude_copy(copy / "model.int8.onnx", tmp_path / "crude.onnx", 2.0)
    update_bundle(copy, add={"model.int8.onnx": crude}, sections={})
    with pytest.raises(CheckpointError, match="stale; rebuild it with rkd export --target trt --force"):
        open_target(copy / "model.x.int8.engine")
    (copy / "model.onnx").write_bytes((copy / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(CheckpointError, match="sha256 mismatch for 'model.onnx'"):
        open_target(copy / "model.int8.onnx")


def test_gates_parse_and_judge() -> None:
    from rkd.verify.gates import check_gate_metrics, evaluate_gates

    g = parse_gate(" drop.robust_acc <= 3% ")
    assert (g.metric, g.op, g.threshold, g.text) == ("drop.robust_acc", "<=", pytest.approx(0.03),
                                                     "drop.robust_acc<=3%")
    report = {"worst_case": {"acc": 0.41, "ci95": [0.38, 0.44]}, "attacks": {"pgd20": {"acc": 0.5, "ci95": [0, 1]}},
              "drop": {"robust_acc": 0.02}, "agreement": {"clean": {"top1_agreement": 0.995}}, "warnings": ["w"]}
    gates = [parse_gate(t) for t in ("robust_acc>=0.40", "lower.robust_acc>=0.40", "drop.robust_acc<=0.03",
                                     "agreement.clean>=0.99", "agreement.adversarial>=0.9", "warnings==0",
                                     "pgd20_acc>0.5")]
    assert [r["passed"] for r in evaluate_gates(gates, report)] == [True, False, True, True, False, False, False]
    # worst_class: the lowest per-class accuracy (classes without samples skipped); absent section -> fails
    report["by_class"] = {"acc": {"worst_case": [0.5, None, 0.04, 0.3], "pgd20": [0.6, None, 0.2, 0.4]}}
    gates = [parse_gate(t) for t in ("worst_class.robust_acc>=0.05", "worst_class.pgd20_acc>=0.2",
                                     "worst_class.clean_acc>=0.1")]
    results = evaluate_gates(gates, report)
    assert [r["value"] for r in results] == [0.04, 0.2, None] and [r["passed"] for r in results] == [False, True, False]
    check_gate_metrics([parse_gate("worst_class.pgd20_acc>=0.1")], ["pgd20"], has_reference=False)
    for bad in ("worst_class.drop.robust_acc<=0.1", "lower.worst_class.robust_acc>=0.1", "worst_class.cw_acc>=0.1"):
        with pytest.raises(UsageError, match="unknown metric"):
            check_gate_metrics([parse_gate(bad)], ["pgd20"], has_reference=True)
    with pytest.raises(UsageError, match="unknown metric 'robust'"):
        check_gate_metrics([parse_gate("robust>=0.4")], ["pgd20"], has_reference=True)
    with pytest.raises(UsageError, match="needs the float reference"):
        check_gate_metrics([parse_gate("drop.clean_acc<=0.01")], ["pgd20"], has_reference=False)
    # transfer runs on the engine only: no drop is defined for it
    with pytest.raises(UsageError, match="does not measure transfer_acc"):
        check_gate_metrics([parse_gate("drop.transfer_acc<=0.01")], ["pgd20", "transfer"], has_reference=True,
                           reference_attacks=["pgd20"])
    check_gate_metrics([parse_gate("transfer_acc>=0.1")], ["pgd20", "transfer"], has_reference=True,
                       reference_attacks=["pgd20"])
    with pytest.raises(UsageError, match="this run has none; add e.g. pgd20"):
        check_gate_metrics([parse_gate("agreement.adversarial>=0.9")], ["square"], has_reference=True,
                           gradient_attacks=False)


@pytest.mark.parametrize("text,hint", [("drop.robust_acc<=3", "write 0.03 or 3%"),
                                       ("robust_acc>=40", "write 0.4 or 40%"),
                                       ("agreement.clean>=1.5", r"outside \[0, 1\]"), ("clean_acc>=-0.1", "outside"),
                                       ("warnings<=-1", "outside"), ("drop.clean_acc<=300%", "outside")])
def test_a_gate_threshold_outside_its_metric_range_is_refused(text: str, hint: str) -> None:
    """Accuracies are fractions: 'drop.robust_acc<=3' (meant as 3 points) would always pass."""
    with pytest.raises(UsageError, match=hint):
        parse_gate(text)
    for fine in ("drop.robust_acc<=0.03", "drop.robust_acc<=3%", "drop.clean_acc>=-0.05", "warnings<=2",
                 "lower.robust_acc>=0", "robust_acc<=1"):
        parse_gate(fine)


def test_transfer_covers_the_reference_errors_and_counts_what_it_cannot() -> None:
    """Transfer uses the reference's adversarial examples; where the reference was wrong on the clean input its
    suite made none: examples of the same attack run from those samples (``errors``) cover them, and without
    them the outcome says how many engine-correct samples are left unattacked."""
    from rkd.verify.suite import AttackOutcome, RobustnessResult
    from rkd.verify.transfer import transfer_outcome

    class _Runtime:  # predicts class 0 on adversarial inputs (all 1.0) and the label otherwise
        def predict(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(torch.where(x.flatten(1)[:, 0] == 1.0, 0, 1), 2).float()

    x, y = torch.zeros(6, 3, 2, 2), torch.ones(6, dtype=torch.long)
    ref_clean = torch.tensor([True, True, True, False, False, True])
    engine_clean = torch.tensor([True, True, False, True, True, False])
    x_adv = x.clone()
    x_adv[[0]] = 1.0  # the reference's attack broke sample 0 only in a way that transfers
    ref = RobustnessResult(outcomes={"clean": AttackOutcome("clean", ref_clean, 0.0),
                                     "pgd5": AttackOutcome("pgd5", torch.zeros(6, dtype=torch.bool), 0.0, x_adv=x_adv)},
                           eps=8 / 255, norm="linf", seed=0, n=6)
    out = transfer_outcome(_Runtime(), ref, engine_clean, x, y)
    assert out.correct.tolist() == [False, True, False, True, True, False]
    assert out.details["broken_by_source"] == {"pgd5": 1} and out.details["not_covered"] == 2  # samples 3, 4
    gap = torch.tensor([3, 4])
    gap_adv = torch.zeros(2, 3, 2, 2)
    gap_adv[1] = 1.0  # the reference's attack from sample 4 transfers, from sample 3 it does not
    errors = RobustnessResult(outcomes={"clean": AttackOutcome("clean", torch.zeros(2, dtype=torch.bool), 0.0),
                                        "pgd5": AttackOutcome("pgd5", torch.zeros(2, dtype=torch.bool), 0.0,
                                                              x_adv=gap_adv)},
                              eps=8 / 255, norm="linf", seed=0, n=2)
    out = transfer_outcome(_Runtime(), ref, engine_clean, x, y, (gap, errors))
    assert out.correct.tolist() == [False, True, False, True, False, False]
    assert out.details["broken_by_source"] == {"pgd5": 2}
    assert out.details["not_covered"] == 0 and out.details["from_reference_errors"] == 2
    assert torch.equal(out.x_adv[4], gap_adv[1])  # the example that broke it is kept


def test_transfer_attacks_from_the_samples_the_reference_gets_wrong(bundle: Path, tmp_path: Path) -> None:
    """A weaker reference (a crudely quantized copy) is wrong where the engine is right: the reference's PGD runs
    from those samples too, so transfer covers every engine-correct sample."""
    crude = _crude_copy(bundle / "model.int8.onnx", tmp_path / "crude.int8.onnx", factor=128.0)  # ~30% clean
    req = VerifyRequest(artifact=bundle / "model.int8.onnx", reference=crude, dataset="synthetic",
                        data_options={"n": 500}, n=128, attacks="pgd5", eps=4 / 255)
    rep = verify_artifact(req)
    engine_clean = torch.tensor(rep["per_sample"]["clean"])
    ref_model, _ = load_differentiable(crude, "cpu")
    data = load_dataset("synthetic", "test", n=500)
    idx = select_indices(len(data), 128, seed=0, mode="first")
    float_clean = predict_correct(ref_model, data.to_float(idx), data.y[idx])
    gap = int((engine_clean & ~float_clean).sum())
    details = rep["attacks"]["transfer"]["details"]
    assert gap > 0 and details["from_reference_errors"] == gap and details["not_covered"] == 0
    transfer = torch.tensor(rep["per_sample"]["transfer"])
    assert bool((transfer <= engine_clean).all())


def test_warnings_and_adversarial_agreement_look_only_at_what_was_attacked() -> None:
    """Square alone: clean errors are not 'broken by Square'; AutoAttack's x_adv rows equal to x (nothing found,
    or not attacked) are not adversarial inputs."""
    from types import SimpleNamespace

    from rkd.verify.checks import TRANSFER
    from rkd.verify.diagnostics import Diagnostics, perturbed, warnings
    from rkd.verify.suite import AttackOutcome, RobustnessResult, parse_attacks

    clean = torch.tensor([True, False, False, True])
    result = RobustnessResult({"clean": AttackOutcome("clean", clean, 0.0),
                               "square": AttackOutcome("square", clean.clone(), 0.0, {}),
                               TRANSFER: AttackOutcome(TRANSFER, clean.clone(), 0.0, {})}, 8 / 255, "linf", 0, 4)
    target = SimpleNamespace(warnings=[], threat_model=None)
    request, checks = VerifyRequest(artifact="x", eps=8 / 255, norm="linf"), Diagnostics({}, 0, 2)
    assert warnings(target, result, parse_attacks("square"), checks, request) == []
    result.outcomes["square"].correct[0] = False
    warned = warnings(target, result, parse_attacks("square"), checks, request)
    assert len(warned) == 1 and "Square (no gradients) broke 1 sample(s)" in warned[0]
    x = torch.rand(4, 3, 2, 2)
    x_adv = x.clone()
    x_adv[2] += 0.01
    assert torch.equal(perturbed(x_adv, x), x_adv[2:3])


def test_a_tensorrt_engine_without_a_gpu_says_where_to_verify_it(tmp_path: Path) -> None:
    engine = tmp_path / "model.x.int8.engine"
    engine.write_bytes(b"not an engine")
    res = _run("--engine", str(engine), "--device", "cpu", "--no-gates")
    assert res.exit_code == 2 and "runs only on a CUDA GPU: drop --device cpu" in " ".join(res.output.split())
    if not torch.cuda.is_available():
        res = _run("--engine", str(engine), "--no-gates")
        assert res.exit_code == 3 and "no CUDA GPU is visible here" in " ".join(res.output.split())
